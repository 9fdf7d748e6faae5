"""``lvisctl finetune-bags``: retrain only the box classifier with Balanced GroupSoftmax (Table 2, "GS").

A stage-2 phase of its own (checkpoints ``checkpoints/finetune_bags_*.pt``, or ``--phase NAME``), so it
can sit next to a full ``train --stage 2`` run in one run directory and both start from the same stage-1
checkpoint. The frozen parts (backbone, neck, RPN, mask head) are built as the stage-1 checkpoint was.
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
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Start this phase again: its earlier checkpoints, config and logs are replaced.",
    ),
    allow_changed_inputs: bool = typer.Option(
        False, "--allow-changed-inputs", help="With --resume: continue even though a training input changed."
    ),
    phase: str = typer.Option(
        PHASE,
        "--phase",
        help="Name of this phase (checkpoints/<phase>_final.pt); several recipes can coexist.",
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="Config overrides key.sub=value (e.g. solver.max_iter=100)."
    ),
) -> None:
    """Fine-tune the box classifier of the stage-1 model with Balanced GroupSoftmax; all else frozen.

    Starts from the run's stage-1 final checkpoint (or train.init_from: a path, best, final, a phase).
    """
    from lvisctl.cli.train import check_phase_name, run_training
    from lvisctl.config import CONFIG_ROOT, load_config

    check_phase_name(phase)
    default = CONFIG_ROOT / "stage2" / "finetune_bags.yaml"
    keep_saved = resume and config is None and not overrides
    cfg = None if keep_saved else load_config(config or default, overrides or [])
    resume_cmd = f"lvisctl finetune-bags --run-dir {run_dir}" + (
        f" --phase {phase}" if phase != PHASE else ""
    )
    run_training(
        cfg,
        run_dir,
        stage=2,
        phase=phase,
        label="finetune-bags" if phase == PHASE else phase,
        resume_cmd=resume_cmd + " --resume",
        resume=resume,
        overwrite=overwrite,
        allow_changed_inputs=allow_changed_inputs,
    )


def register(app: typer.Typer) -> None:
    app.command("finetune-bags")(finetune_bags_command)
