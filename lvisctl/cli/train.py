"""``lvisctl train``: stage-1 (representation learning) or stage-2 (fine-tuning) training in a run dir.

Multi-GPU / multi-node: ``torchrun --nproc_per_node 8 -m lvisctl train --stage 1 ...``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TrainingPhase:
    """What a training command trains and how it speaks of it: ``stage``, ``phase`` (None: the stage's
    default name), the console ``label``, the command line that resumes it (less ``--resume``) and the
    config used when none is given (None: configs/base.yaml)."""

    stage: int
    phase: str | None
    label: str
    command: str
    default_config: Path | None = None


def run_training(
    run_dir: Path,
    target: TrainingPhase,
    config: Path | None,
    overrides: list[str] | None,
    *,
    resume: bool,
    **flags: bool,
) -> None:
    """Train and report (rank 0); Ctrl-C prints where to resume and exits 130. Resuming without a config
    or overrides keeps the config saved in the checkpoint. The run's remembered data fills what the config
    leaves empty; the data given is remembered once training finished."""
    from lvisctl.config import load_config
    from lvisctl.data.remembered import fill_data
    from lvisctl.training import TrainingInterrupted, train

    check_phase_name(target.phase)
    keep_saved = resume and config is None and not overrides
    cfg = None if keep_saved else load_config(config or target.default_config, overrides or [])
    if cfg is not None:
        cfg = fill_data(run_dir, cfg, note)
    label, resume_cmd = target.label, target.command + " --resume"
    try:
        result = train(cfg, run_dir, stage=target.stage, phase=target.phase, resume=resume, **flags)
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
    command = f"lvisctl train --run-dir {run_dir} --stage {stage}" + (f" --phase {phase}" if phase else "")
    run_training(
        run_dir,
        TrainingPhase(stage, phase, label=phase or f"stage {stage}", command=command),
        config,
        overrides,
        resume=resume,
        overwrite=overwrite,
        allow_changed_inputs=allow_changed_inputs,
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
