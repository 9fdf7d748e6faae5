"""``lvisctl demo``: the whole pipeline on synthetic LVIS in minutes on a CPU (``make demo``).

Synthetic LVIS (demo preset) -> stage-1 training with EQL + RFS + Mosaic/rotate/scale jitter
(``configs/demo/stage1.yaml``) -> stage-2 fine-tuning with Balanced GroupSoftmax and the high-quality-mask
methods (``configs/demo/stage2.yaml``) -> inference of both on the synthetic val split -> LVIS evaluation
and a stage 1 vs stage 2 table. Each step calls the same layer function as its own command (``data
synth``, ``train``, ``tta-infer``, ``evaluate``) and is skipped when the run directory already holds its
result, so re-running the demo continues where it stopped (the orchestration lives in
``lvisctl.pipeline``; this module only declares the command). Sizes are options: ``--preset tiny --iters 20
--stage2-iters 10`` is the CI-sized run.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from lvisctl.cli._options import ConfigOption, OverridesArgument, PresetOption, RunDirOption, SeedOption


def demo_command(
    run_dir: RunDirOption = Path("demo-run"),
    preset: PresetOption = "demo",
    iters: int | None = typer.Option(None, "--iters", min=1, help="Stage-1 iterations (solver.max_iter)."),
    stage2_iters: int | None = typer.Option(
        None, "--stage2-iters", min=1, help="Stage-2 iterations (default: configs/demo/stage2.yaml)."
    ),
    seed: SeedOption = 0,
    config: ConfigOption = None,
    stage2_config: Path | None = typer.Option(
        None,
        "--stage2-config",
        help="Stage-2 config, a path or a packaged name (default demo/stage2: GS + HM + heavier head).",
    ),
    overrides: OverridesArgument = None,
) -> None:
    """Synthesize LVIS, train stage 1 and stage 2, predict on val, print the LVIS metrics of both.

    Re-run to resume. --config and the overrides are stage 1's (default demo/stage1).
    """
    from dataclasses import replace

    from rich.console import Console

    from lvisctl.evaluation.report import comparison_table
    from lvisctl.pipeline import DEMO_STAGE1, DEMO_STAGE2, run_phases
    from lvisctl.rundir import RunDir

    console = Console(highlight=False)
    stage1 = replace(DEMO_STAGE1, config=config or DEMO_STAGE1.config)
    stage2 = replace(DEMO_STAGE2, config=stage2_config or DEMO_STAGE2.config)
    extra = {
        stage1.phase: [
            *(overrides or []),
            f"seed={seed}",
            *([f"solver.max_iter={iters}", f"train.eval_period={max(1, iters // 2)}"] if iters else []),
        ],
        stage2.phase: [f"seed={seed}", *([f"solver.max_iter={stage2_iters}"] if stage2_iters else [])],
    }
    run = RunDir(run_dir)
    result = run_phases(
        run,
        [stage1, stage2],
        preset=preset,
        seed=seed,
        prefix="demo",
        extra_overrides=extra,
        heading=lambda text: console.rule(Text(text, style="bold")),
        report=lambda text: console.print(text, markup=False),
    )
    console.print(comparison_table(result.rows, title="stage 1 vs stage 2 on the synthetic val split (%)"))
    console.print(
        "gap = box AP - mask AP; AP thin / rest = mask AP on categories whose median mask/box area ratio "
        "is below / above 0.25"
    )
    plots = [a.path for a in run.artifacts("plot")]
    console.print("plots: " + (", ".join(plots) if plots else "none"), markup=False)
    console.print(
        f"everything is recorded in {run.manifest_path} (lvisctl runs show {run.root})", markup=False
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
