"""``lvisctl demo``: the whole pipeline on synthetic LVIS in minutes on a CPU (``make demo``).

Synthetic LVIS (demo preset) -> stage-1 training with EQL + RFS + Mosaic/rotate/scale jitter
(``configs/demo/stage1.yaml``) -> stage-2 fine-tuning with Balanced GroupSoftmax and the high-quality-mask
methods (``configs/demo/stage2.yaml``) -> inference of both on the synthetic val split -> LVIS evaluation
and a stage 1 vs stage 2 table. Each step calls the same layer function as its own command (``data
synth``, ``train``, ``tta-infer``, ``evaluate``) and is skipped when the run directory already holds its
result, so re-running the demo continues where it stopped. Sizes are options: ``--preset tiny --iters 20
--stage2-iters 10`` is the CI-sized run.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lvisctl.evaluation.report import comparison_table
from lvisctl.rundir import RunDir


def demo_command(
    run_dir: Path = typer.Option(Path("demo-run"), "--run-dir", help="Run directory (re-run to resume)."),
    preset: str = typer.Option("demo", "--preset", help="Synthetic data size: demo (README) or tiny (CI)."),
    iters: int | None = typer.Option(None, "--iters", min=1, help="Stage-1 iterations (solver.max_iter)."),
    stage2_iters: int | None = typer.Option(
        None, "--stage2-iters", min=1, help="Stage-2 iterations (default: configs/demo/stage2.yaml)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data and of training."),
    config: Path | None = typer.Option(
        None, "--config", help="Stage-1 config (default configs/demo/stage1.yaml)."
    ),
    stage2_config: Path | None = typer.Option(
        None, "--stage2-config", help="Stage-2 config (default configs/demo/stage2.yaml: GS + HM)."
    ),
    overrides: list[str] | None = typer.Argument(None, help="Stage-1 config overrides key.sub=value."),
) -> None:
    """Synthesize LVIS, train stage 1 and stage 2, predict on val, print the LVIS metrics of both."""
    from rich.console import Console

    from lvisctl.config import CONFIG_ROOT, load_config
    from lvisctl.engine.trainer import train

    console = Console(highlight=False)
    run = RunDir(run_dir)
    items = [*(overrides or []), f"seed={seed}", *([f"solver.max_iter={iters}"] if iters else [])]
    cfg1 = load_config(config or CONFIG_ROOT / "demo" / "stage1.yaml", items)  # fail fast on bad overrides
    items2 = [f"seed={seed}", *([f"solver.max_iter={stage2_iters}"] if stage2_iters else [])]
    cfg2 = load_config(stage2_config or CONFIG_ROOT / "demo" / "stage2.yaml", items2)

    console.rule("[bold]1/5 synthetic LVIS")
    val_json = ensure_dataset(run, preset, seed)
    console.rule("[bold]2/5 stage 1: EQL + RFS + Mosaic/rotate/scale jitter")
    _report_training(console, run, train(cfg1, run.root, stage=1, resume=has_checkpoints(run, 1)))
    console.rule("[bold]3/5 stage 2: Balanced GroupSoftmax + high-quality masks (frozen backbone/RPN)")
    _report_training(console, run, train(cfg2, run.root, stage=2, resume=has_checkpoints(run, 2)))
    console.rule("[bold]4/5 inference on the synthetic val split")
    phases = {"stage 1": 1, "stage 2 (GS + HM)": 2}  # table row -> training stage (its default phase)
    for stage in phases.values():
        ensure_predictions(run, val_json, stage)
    console.rule("[bold]5/5 LVIS evaluation")
    rows = {name: evaluate_phase(run, val_json, stage, console) for name, stage in phases.items()}
    console.print(comparison_table(rows, title="stage 1 vs stage 2 on the synthetic val split (%)"))
    console.print(
        "gap = box AP - mask AP; AP thin / rest = mask AP on categories whose median mask/box area ratio "
        "is below / above 0.25"
    )
    plots = [a.path for a in run.artifacts("plot")]
    console.print("plots: " + (", ".join(plots) if plots else "none"))
    console.print(f"everything is recorded in {run.manifest_path} (lvisctl runs show {run.root})")


def _report_training(console, run: RunDir, result) -> None:
    if result.skipped:
        console.print(f"already trained: {run.relative(result.checkpoint)}")


def has_checkpoints(run: RunDir, stage: int) -> bool:
    from lvisctl.engine.checkpoint import latest_checkpoint

    return latest_checkpoint(run, stage) is not None


def ensure_dataset(run: RunDir, preset: str, seed: int) -> Path:
    """The run's registered synthetic val json; generates the data (``lvisctl data synth``) when missing."""
    from lvisctl.data.synth import synthesize_into_run

    found = {s: run.find("dataset", split=s) for s in ("train", "val")}
    if not (found["train"] and found["val"]):
        # A dataset folder without manifest entries is a leftover of an interrupted demo: replace it.
        synthesize_into_run(run, preset=preset, seed=seed, overwrite=True)
        found = {s: run.find("dataset", split=s) for s in ("train", "val")}
    else:
        typer.echo(f"synthetic data already in {run.relative(run.path_of(found['val'][-1].path))}")
    return run.resolve(found["val"][-1])


def ensure_predictions(run: RunDir, val_json: Path, stage: int) -> None:
    """Predictions of ``stage``'s final checkpoint on ``val_json`` (``lvisctl tta-infer``), made once."""
    from lvisctl.engine.checkpoint import latest_checkpoint
    from lvisctl.inference.runner import predict_to_run_dir

    ckpt = latest_checkpoint(run, stage, final=True)
    if any(_made_from(a, ckpt) for a in run.find("predictions", gt=str(val_json), iou_type="segm")):
        typer.echo(f"predictions of {ckpt.path} already made")
        return
    predict_to_run_dir(run.root, val_json, checkpoint=run.resolve(ckpt), overwrite=True)


def evaluate_phase(run: RunDir, val_json: Path, stage: int, console) -> dict:
    """``lvisctl evaluate`` on ``stage``'s predictions (segm + bbox); returns its comparison row."""
    from lvisctl.data.lvis import load_lvis
    from lvisctl.engine.checkpoint import latest_checkpoint
    from lvisctl.evaluation.pipeline import run_evaluate
    from lvisctl.evaluation.report import phase_row
    from lvisctl.evaluation.thin_objects import thin_categories

    ckpt = latest_checkpoint(run, stage, final=True)
    segm = next(a for a in reversed(run.find("predictions", iou_type="segm")) if _made_from(a, ckpt))
    bbox = run.latest("predictions", iou_type="bbox", group=segm.meta["group"])
    out = run.root / "metrics" / f"demo_stage{stage}.json"
    outcome = run_evaluate(None, run_dir=run.root, out=out, overwrite=True, predictions=(segm, bbox))
    console.print(
        f"stage {stage}: segm AP {100 * outcome.metrics['segm']['AP']:.1f}, written to {run.relative(out)}"
    )
    thin = thin_categories(load_lvis(val_json).annotations())
    return phase_row(outcome.metrics, outcome.by_type["segm"].per_category_ap, thin)


def _made_from(artifact, checkpoint) -> bool:
    return any(i.get("sha256") == checkpoint.sha256 for i in artifact.inputs)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
