"""``lvisctl finetune-bags``: retrain only the box head with Balanced GroupSoftmax (Table 2, "GS").

A stage-2 phase of its own (checkpoints ``checkpoints/finetune_bags_*.pt``), so it can sit next to a full
``train --stage 2`` run in one run directory and both start from the same stage-1 checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import typer

PHASE = "finetune_bags"


def finetune_bags_command(
    run_dir: Path = typer.Option(..., "--run-dir", help="Run directory holding the stage-1 checkpoint."),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Config, a path or a packaged name (default stage2/finetune_bags: BAGS tunefc, classifier).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest finetune-bags checkpoint."),
    overrides: list[str] | None = typer.Argument(
        None, help="Config overrides key.sub=value (e.g. solver.max_iter=100)."
    ),
) -> None:
    """Fine-tune the box classifier of the stage-1 model with Balanced GroupSoftmax; all else frozen.

    Starts from the run's stage-1 final checkpoint (or train.init_from).
    """
    from lvisctl.config import CONFIG_ROOT, load_config
    from lvisctl.engine.trainer import train

    default = CONFIG_ROOT / "stage2" / "finetune_bags.yaml"
    keep_saved = resume and config is None and not overrides
    cfg = None if keep_saved else load_config(config or default, overrides or [])
    result = train(cfg, run_dir, stage=2, phase=PHASE, resume=resume)
    if not result.is_main:
        return
    verb = "already finished" if result.skipped else f"done after {result.iteration} iterations"
    typer.echo(f"finetune-bags {verb}: {result.checkpoint}")


def register(app: typer.Typer) -> None:
    app.command("finetune-bags")(finetune_bags_command)
