"""``lvisctl finetune-bags``: retrain only the box classifier with Balanced GroupSoftmax (Table 2, "GS").

A stage-2 phase of its own (checkpoints ``checkpoints/finetune_bags_*.pt``, or ``--phase NAME``), so it
can sit next to a full ``train --stage 2`` run in one run directory and both start from the same stage-1
checkpoint. The frozen parts (backbone, neck, RPN, mask head) are built as the stage-1 checkpoint was.
"""

from __future__ import annotations

import typer

from lvisctl.cli._options import (
    AllowChangedInputsOption,
    ConfigOption,
    OverridesArgument,
    OverwriteOption,
    PhaseOption,
    ResumeOption,
    RunDirOption,
)

PHASE = "finetune_bags"


def finetune_bags_command(
    run_dir: RunDirOption,
    config: ConfigOption = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    allow_changed_inputs: AllowChangedInputsOption = False,
    phase: PhaseOption = PHASE,
    overrides: OverridesArgument = None,
) -> None:
    """Fine-tune the box classifier of the stage-1 model with Balanced GroupSoftmax; all else frozen.

    Starts from the run's stage-1 final checkpoint (or train.init_from: a path, best, final, a phase).
    Config default: stage2/finetune_bags (BAGS tunefc, classifier).
    """
    from lvisctl.cli.train import TrainingPhase, run_training
    from lvisctl.config import CONFIG_ROOT

    command = f"lvisctl finetune-bags --run-dir {run_dir}" + (f" --phase {phase}" if phase != PHASE else "")
    label = "finetune-bags" if phase == PHASE else phase
    default = CONFIG_ROOT / "stage2" / "finetune_bags.yaml"
    run_training(
        run_dir,
        TrainingPhase(2, phase, label=label, command=command, default_config=default),
        config,
        overrides,
        resume=resume,
        overwrite=overwrite,
        allow_changed_inputs=allow_changed_inputs,
    )


def register(app: typer.Typer) -> None:
    app.command("finetune-bags")(finetune_bags_command)
