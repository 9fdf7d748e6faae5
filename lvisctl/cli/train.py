"""``lvisctl train``: stage-1 (representation learning) or stage-2 (fine-tuning) training in a run dir.

Multi-GPU / multi-node: ``torchrun --nproc_per_node 8 -m lvisctl train --stage 1 ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from lvisctl.cli._command import note
from lvisctl.cli._options import (
    AllowChangedInputsOption,
    ConfigOption,
    OverridesArgument,
    OverwriteOption,
    PhaseOption,
    ResumeOption,
    RunDirOption,
)


def check_phase_name(phase: str | None) -> None:
    from lvisctl.errors import LvisctlError

    if phase is not None and not phase.replace("_", "").replace("-", "").isalnum():
        raise LvisctlError(f"--phase {phase!r}: use letters, digits, '_' and '-' only")


def run_training(
    cfg, run_dir: Path, *, stage: int, phase: str | None, label: str, resume_cmd: str, **kw
) -> None:
    """Train and report (rank 0); Ctrl-C prints where to resume and exits 130. The run's remembered data
    fills what the config leaves empty; the data given is remembered once training finished."""
    from lvisctl.data.remembered import fill_data
    from lvisctl.training import TrainingInterrupted, train

    if cfg is not None:
        cfg = fill_data(run_dir, cfg, note)

    try:
        result = train(cfg, run_dir, stage=stage, phase=phase, **kw)
    except TrainingInterrupted as stop:
        where = f"{label} interrupted at iteration {stop.iteration}"
        if stop.checkpoint is None:
            msg = f"{where}, before its first checkpoint: nothing was kept"
        else:
            msg = f"{where}; resume from {stop.checkpoint} with: {resume_cmd}"
        if stop.is_main:
            print(msg, file=sys.stderr)
        raise typer.Exit(130) from None
    if not result.is_main:  # torchrun: rank 0 reports
        return
    if cfg is not None:  # the data this run trained on, for its later commands
        from lvisctl.data.remembered import given_data, remember_data

        remember_data(run_dir, given_data(cfg.data), note)
    if result.skipped:
        typer.echo(f"{label} already finished: {result.checkpoint}")
    else:
        typer.echo(f"{label} done after {result.iteration} iterations: {result.checkpoint}")


def train_command(
    run_dir: RunDirOption,
    stage: int = typer.Option(
        1, "--stage", min=1, max=2, help="1 = representation learning, 2 = fine-tuning."
    ),
    config: ConfigOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    allow_changed_inputs: AllowChangedInputsOption = False,
    phase: PhaseOption = None,
    overrides: OverridesArgument = None,
) -> None:
    """Train a model: checkpoints, resolved config, TensorBoard scalars and loss curve go to the run dir.

    Config default: configs/base.yaml. Phase default: stage1 / stage2.

    Training data: data.train from the config, else the newest training dataset artifact of the run dir.
    Stage 2 starts from the stage-1 final checkpoint (or train.init_from: a path, best, final or a phase
    name) and builds the frozen parts exactly as that checkpoint was built.
    """
    from lvisctl.config import load_config

    check_phase_name(phase)
    # Resuming without a config keeps the config saved in the checkpoint.
    cfg = None if (resume and config is None and not overrides) else load_config(config, overrides or [])
    label = phase or f"stage {stage}"
    resume_cmd = f"lvisctl train --run-dir {run_dir} --stage {stage}" + (f" --phase {phase}" if phase else "")
    run_training(
        cfg,
        run_dir,
        stage=stage,
        phase=phase,
        label=label,
        resume_cmd=resume_cmd + " --resume",
        resume=resume,
        overwrite=overwrite,
        allow_changed_inputs=allow_changed_inputs,
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
