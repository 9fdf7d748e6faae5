"""``lvisctl demo``: the whole pipeline on synthetic LVIS in minutes on a CPU (``make demo``).

Synthetic LVIS (demo preset) -> stage-1 training with EQL + RFS + Mosaic/rotate/scale jitter
(``configs/demo/stage1.yaml``) -> inference on the synthetic val split -> LVIS evaluation. Each step calls
the same layer function as its own command (``data synth``, ``train``, ``tta-infer``, ``evaluate``) and is
skipped when the run directory already holds its result, so re-running the demo continues where it
stopped. Sizes are config values: ``--preset tiny --iters 20`` is the CI-sized run.
"""

from __future__ import annotations

from pathlib import Path

import typer


def demo_command(
    run_dir: Path = typer.Option(Path("demo-run"), "--run-dir", help="Run directory (re-run to resume)."),
    preset: str = typer.Option("demo", "--preset", help="Synthetic data size: demo (README) or tiny (CI)."),
    iters: int | None = typer.Option(None, "--iters", min=1, help="Training iterations (solver.max_iter)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data and of training."),
    config: Path | None = typer.Option(
        None, "--config", help="Training config (default configs/demo/stage1.yaml)."
    ),
    overrides: list[str] | None = typer.Argument(None, help="Training config overrides key.sub=value."),
) -> None:
    """Synthesize LVIS, train stage 1, predict on val and print the LVIS metrics (segm AP, APr/APc/APf)."""
    from rich.console import Console

    from lvisctl.config import CONFIG_ROOT, load_config
    from lvisctl.engine.trainer import train
    from lvisctl.rundir import RunDir

    console = Console(highlight=False)
    run = RunDir(run_dir)
    items = [*(overrides or []), f"seed={seed}", *([f"solver.max_iter={iters}"] if iters else [])]
    cfg = load_config(config or CONFIG_ROOT / "demo" / "stage1.yaml", items)  # fail fast on a bad override

    console.rule("[bold]1/4 synthetic LVIS")
    val_json = ensure_dataset(run, preset, seed)
    console.rule("[bold]2/4 stage-1 training (EQL + RFS + Mosaic/rotate/scale jitter)")
    result = train(cfg, run.root, stage=1, resume=has_checkpoints(run, 1))
    if result.skipped:
        console.print(f"already trained: {run.relative(result.checkpoint)}")
    console.rule("[bold]3/4 inference on the synthetic val split")
    predictions = ensure_predictions(run, val_json)
    console.rule("[bold]4/4 LVIS evaluation")
    evaluate_predictions(run, predictions)
    plots = [a.path for a in run.artifacts("plot")]
    console.print("plots: " + (", ".join(plots) if plots else "none"))
    console.print(f"everything is recorded in {run.manifest_path} (lvisctl runs show {run.root})")


def has_checkpoints(run, stage: int) -> bool:
    from lvisctl.engine.checkpoint import latest_checkpoint

    return latest_checkpoint(run, stage) is not None


def ensure_dataset(run, preset: str, seed: int) -> Path:
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


def ensure_predictions(run, val_json: Path):
    """Predictions of the newest final checkpoint on ``val_json`` (``lvisctl tta-infer``), made once."""
    from lvisctl.inference.runner import default_checkpoint, predict_to_run_dir

    ckpt = default_checkpoint(run)
    for artifact in reversed(run.find("predictions", gt=str(val_json))):
        if any(i.get("sha256") == ckpt.sha256 for i in artifact.inputs):
            typer.echo(f"predictions already in {artifact.path}")
            return artifact
    outcome = predict_to_run_dir(run.root, val_json, overwrite=True)
    return outcome.artifact


def evaluate_predictions(run, predictions) -> dict:
    """``lvisctl evaluate`` on the predictions: metrics table (AP, APr/APc/APf), json, csv and plot."""
    from rich.console import Console

    from lvisctl.cli.evaluate import metrics_table
    from lvisctl.evaluation.pipeline import run_evaluate

    results = run.resolve(predictions)
    outcome = run_evaluate(results, gt=Path(predictions.meta["gt"]), run_dir=run.root, overwrite=True)
    Console().print(metrics_table(outcome.metrics))
    return outcome.metrics


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
