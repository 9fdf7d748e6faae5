"""``lvisctl train``: stage-1 (representation learning) or stage-2 (fine-tuning) training in a run dir.

Multi-GPU / multi-node: ``torchrun --nproc_per_node 8 -m lvisctl train --stage 1 ...``.
"""

from __future__ import annotations

from pathlib import Path

import typer


def train_command(
    run_dir: Path = typer.Option(..., "--run-dir", help="Run directory (created if missing)."),
    stage: int = typer.Option(
        1, "--stage", min=1, max=2, help="1 = representation learning, 2 = fine-tuning."
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Experiment config: a yaml path or a packaged name (stage1/r50_da_eql_rfs; see lvisctl "
        "configs list). Default: configs/base.yaml.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint of this stage."),
    phase: str | None = typer.Option(
        None,
        "--phase",
        help="Name of this training phase (default stage1/stage2): several stage-2 recipes can share one "
        "run dir, each with its own checkpoints (checkpoints/<phase>_final.pt).",
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="Config overrides key.sub=value (e.g. solver.max_iter=100)."
    ),
) -> None:
    """Train a model: checkpoints, resolved config, TensorBoard scalars and loss curve go to the run dir.

    Training data: data.train from the config, else the newest training dataset artifact of the run dir.
    """
    from lvisctl.config import load_config
    from lvisctl.engine.trainer import train
    from lvisctl.errors import LvisctlError

    # Resuming without a config keeps the config saved in the checkpoint.
    cfg = None if (resume and config is None and not overrides) else load_config(config, overrides or [])
    if phase is not None and not phase.replace("_", "").replace("-", "").isalnum():
        raise LvisctlError(f"--phase {phase!r}: use letters, digits, '_' and '-' only")
    result = train(cfg, run_dir, stage=stage, phase=phase, resume=resume)
    if not result.is_main:  # torchrun: rank 0 reports
        return
    if result.skipped:
        typer.echo(f"{phase or f'stage {stage}'} already finished: {result.checkpoint}")
    else:
        typer.echo(
            f"{phase or f'stage {stage}'} done after {result.iteration} iterations: {result.checkpoint}"
        )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
