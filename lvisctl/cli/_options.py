"""Every option that more than one command takes, declared once (as fastapi-cli does): a command writes
``run_dir: RunDirOption`` and gets the same name, type, help and checks as every other command.

One name, one meaning:

- ``--run-dir``: the run directory; default inputs are found through it, outputs are recorded in it.
- ``--image-root``: the folder the image paths of a json are relative to (never a folder to search:
  that is ``--images DIR``; pseudolabel still reads ``--image-root DIR`` alone as the folder, with a note).
- ``--checkpoint``: a checkpoint file or name (``best``, ``final``, a phase), by default the run's newest
  final one; commands that can use several (``tta-infer``, ``analyze masks``) take it repeated.
- ``--overwrite``: replace the outputs the command would otherwise refuse to replace.

``--out`` and ``--images`` are declared per command: what they accept and default to is the command's own.

Types of the options whose values come from a fixed set: Typer lists them in ``--help`` and Click
rejects anything else; the command bodies still receive plain strings. The sets are spelled out here
rather than imported from the layers so that ``lvisctl --help`` stays instant; tests check that they
match the layers' tables.
"""

from __future__ import annotations

from itertools import permutations
from pathlib import Path
from typing import Annotated, Literal

import typer

SYNTH_PRESETS = ("tiny", "demo", "val-scale", "hm")  # lvisctl.data.synth.PRESETS
PSEUDO_SOURCES = (
    "lvis",
    "openimages",
    "images",
)  # pseudolabel SOURCE (a plain argument: key=value may stand there)
PSEUDO_MODES = ("missing", "unlabeled")  # lvisctl.inference.pseudo_labels.MODES (the old --mode)
IOU_TYPES = ("segm", "bbox")  # lvisctl.evaluation.lvis_metrics.IOU_TYPES
TTA_MODES = ("plain", "paper")  # lvisctl.inference.tta (inference.tta.mode)
EXTRA_METRICS = ("boundary", "fixed")  # lvisctl.evaluation.pipeline.EXTRA_METRICS


def comma_lists(values: tuple[str, ...], *, allow_empty: bool = False) -> tuple[str, ...]:
    """Every comma-separated list of distinct ``values`` (``segm``, ``bbox``, ``segm,bbox``, ...)."""
    combos = [",".join(p) for n in range(1, len(values) + 1) for p in permutations(values, n)]
    return tuple(([""] if allow_empty else []) + combos)


SynthPreset = Literal[SYNTH_PRESETS]  # type: ignore[valid-type]
PseudoMode = Literal[PSEUDO_MODES]  # type: ignore[valid-type]
IouTypeList = Literal[comma_lists(IOU_TYPES)]  # type: ignore[valid-type]
ExtraMetricList = Literal[comma_lists(EXTRA_METRICS, allow_empty=True)]  # type: ignore[valid-type]
TtaMode = Literal[TTA_MODES]  # type: ignore[valid-type]

# ------------------------------------------------------------------------------------ run directory
_RUN_DIR = typer.Option(
    "--run-dir",
    help="Run directory: default inputs come from it, outputs are recorded in it.",
)
RunDirOption = Annotated[Path, _RUN_DIR]
OptionalRunDirOption = Annotated[Path | None, _RUN_DIR]  # Typer copies the OptionInfo per use

# ------------------------------------------------------------------------------------ inputs
_CHECKPOINT_HELP = (
    "Checkpoint file, or best / final / a phase name; default (printed): the run's newest final one, "
    "stage 2 before 1 (pseudolabel: stage 1)."
)
CheckpointOption = Annotated[Path | None, typer.Option("--checkpoint", help=_CHECKPOINT_HELP)]
CheckpointsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--checkpoint",
        help=_CHECKPOINT_HELP + " Repeat it to use several (tta-infer: an ensemble fused per image, "
        "inference.ensemble.*; analyze: compared side by side).",
    ),
]
ImageRootOption = Annotated[
    Path | None,
    typer.Option(
        "--image-root",
        help="Folder the json's image paths are relative to (default: the run's data.image_root, else "
        "the json's folder).",
    ),
]
ImageListOption = Annotated[
    Path | None,
    typer.Option(
        "--image-list",
        help="With --images DIR: only these images: an Open Images CSV (column ImageID -> "
        "DIR/<ImageID>.jpg), a CSV with file_name/path, or one id or path per line.",
    ),
]
GtOption = Annotated[
    Path | None,
    typer.Option(
        "--gt",
        help="LVIS annotation file (ground truth); default: the one the run directory records for the input.",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Config: a yaml path or a packaged name (stage1/r50_da_eql_rfs; see lvisctl configs list); "
        "the default is in the command's description.",
    ),
]
OverridesArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Config overrides key.sub=value (e.g. solver.max_iter=100); of the checkpoint's config for "
        "commands that load one.",
    ),
]
ScalesOption = Annotated[
    str | None,
    typer.Option(
        "--scales",
        help="Test scale(s), short side in pixels: 800 or 600,800,1000 (default inference.scales, or "
        "inference.tta.scales with --tta paper).",
    ),
]

# ------------------------------------------------------------------------------------ outputs and runs
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace existing outputs instead of refusing (training: start the phase again).",
    ),
]
MaxChunksOption = Annotated[
    int | None,
    typer.Option(
        "--max-chunks",
        min=0,
        help="Stop each process after this many new chunks of images (time-limited jobs); rerun the "
        "same command to continue.",
    ),
]
MaxImagesOption = Annotated[int | None, typer.Option("--max-images", min=1, help="At most this many images.")]
PresetOption = Annotated[
    SynthPreset,
    typer.Option(
        "--preset",
        help="Synthetic dataset size: tiny (tests, CI), demo (README demo), val-scale (LVIS-like image "
        "sizes) or hm (320 px, large thin objects: where Eq. 1 moves RoIs).",
    ),
]
SeedOption = Annotated[
    int, typer.Option("--seed", help="Seed: the synthetic data (and training) are deterministic given it.")
]

# ------------------------------------------------------------------------------------ training
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from the newest checkpoint of this phase.")
]
AllowChangedInputsOption = Annotated[
    bool,
    typer.Option(
        "--allow-changed-inputs",
        help="With --resume: continue even though a training input (annotations, pseudo labels, the "
        "stage-1 checkpoint) changed since the checkpoint was written.",
    ),
]
PhaseOption = Annotated[
    str | None,
    typer.Option(
        "--phase",
        help="Name of this training phase: several recipes can share one run dir, each with its own "
        "checkpoints (checkpoints/<phase>_final.pt).",
    ),
]
