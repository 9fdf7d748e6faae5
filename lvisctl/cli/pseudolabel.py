"""``lvisctl pseudolabel SOURCE``: self-training pseudo labels (paper section 2.1).

Several GPUs / nodes: ``torchrun --nproc_per_node 8 -m lvisctl pseudolabel openimages --run-dir DIR ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from lvisctl.cli._command import command, echo_main, job_from, note, stopped_by_max_chunks
from lvisctl.cli._options import (
    PSEUDO_SOURCES,
    CheckpointOption,
    ImageListOption,
    ImageRootOption,
    MaxChunksOption,
    OverridesArgument,
    OverwriteOption,
    PseudoMode,
    RunDirOption,
    ScalesOption,
)
from lvisctl.cli._progress import ImagesProgress

SOURCE_HELP = (
    "lvis: missing annotations on LVIS train (ignore regions; default images: the checkpoint's training "
    "json); openimages: unlabeled Open Images (--images DIR [--image-list CSV]) for joint training; images: "
    "any image folder or image-info json (same, without Open Images naming)."
)


@dataclass(kw_only=True)
class PseudolabelOptions:
    """The options of ``lvisctl pseudolabel``, in ``--help`` order."""

    source: Annotated[
        str | None, typer.Argument(help=SOURCE_HELP, show_default=False, metavar="|".join(PSEUDO_SOURCES))
    ] = None
    run_dir: RunDirOption
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="LVIS train json (lvis), or an image folder (searched recursively for jpg/png) / "
            "image-info json (openimages, images).",
        ),
    ] = None
    image_root: ImageRootOption = None
    image_list: ImageListOption = None
    mode: Annotated[
        PseudoMode | None,
        typer.Option("--mode", hidden=True, help="Old name of SOURCE: missing = lvis, unlabeled = images."),
    ] = None
    checkpoint: CheckpointOption = None
    score_thresh: Annotated[
        str,
        typer.Option(
            "--score-thresh",
            help="Keep detections >= this; one number or per frequency group: r=0.3,c=0.4,f=0.5.",
        ),
    ] = "0.5"
    max_gt_iou: Annotated[
        float,
        typer.Option(
            "--max-gt-iou",
            min=0.0,
            max=1.0,
            help="lvis: keep boxes whose IoU with every GT box is <= this.",
        ),
    ] = 0.0
    max_per_image: Annotated[
        int, typer.Option("--max-per-image", min=1, help="openimages/images: labels per image.")
    ] = 50
    scales: ScalesOption = None
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Threads reading image headers (sizes).")
    ] = 8
    max_chunks: MaxChunksOption = None
    out: Annotated[
        Path | None, typer.Option("--out", help="Default DIR/pseudo_labels/<images>_<mode>.json.")
    ] = None
    overwrite: OverwriteOption = False
    overrides: OverridesArgument = None


@command(PseudolabelOptions, distributed=True)
def pseudolabel_command(o: PseudolabelOptions) -> None:
    """Predict on images and keep confident detections as pseudo labels (an LVIS json in the run dir).

    Train with them: `lvisctl train --stage 1 ... data.pseudo_labels=latest` (lvis: ignore regions) and
    `data.extra_images=latest` (openimages/images: joint training, data.extra_per_epoch images per
    epoch, weight data.extra_loss_weight).
    """
    from rich.console import Console

    from lvisctl.inference.predict_job import parse_scales
    from lvisctl.inference.pseudo_labels import ScoreThresholds
    from lvisctl.inference.pseudolabel_job import PseudoLabelJob

    source, extra = _source(o.source, o.mode)
    thresholds = ScoreThresholds.parse(o.score_thresh)
    images = _images(source, o.images, o.image_root)
    with ImagesProgress("pseudolabel") as progress:
        job = job_from(
            PseudoLabelJob,
            o,
            source=source,
            images=images,
            scales=parse_scales(o.scales) if o.scales else None,
            score_thresh=thresholds,
            overrides=[*extra, *(o.overrides or [])],
            on_start=progress.start,
            on_images=progress.advance,
            on_note=echo_main,  # stdout, once under torchrun
        )
        outcome = job.run()
    if outcome.incomplete:
        raise stopped_by_max_chunks()
    if outcome.artifact is None:
        return
    console = Console(highlight=False, soft_wrap=True)
    for line in outcome.score_lines:
        console.print(line, markup=False)
    m = outcome.artifact.meta
    console.print(
        f"{m['num_labels']} pseudo labels ({source}, score >= {m['score_thresh']}) on "
        f"{m['num_images']} images -> {outcome.artifact.path}"
        + (f" ({outcome.skipped.count} unreadable images skipped)" if outcome.skipped.count else ""),
        markup=False,
    )
    if outcome.empty_dropped:
        from lvisctl.inference.results import empty_dropped_line

        console.print(empty_dropped_line(outcome.empty_dropped), markup=False)


def _images(source: str, images: Path | None, image_root: Path | None) -> Path | None:
    """``--images``; for openimages / images, the old ``--image-root DIR`` alone is still read as the
    folder of images (``--image-root`` is what a json's image paths are relative to everywhere else)."""
    if images is None and image_root is not None and source != "lvis":
        note(f"note: --image-root DIR as the image folder is deprecated; use --images {image_root}")
        return image_root
    return images


def _source(source: str | None, mode: str | None) -> tuple[str, list[str]]:
    """SOURCE, or the hidden --mode alias; a ``key=value`` in SOURCE's place is the first override."""
    from lvisctl.errors import LvisctlError
    from lvisctl.inference.pseudo_labels import MODES, SOURCES

    extra: list[str] = []
    if source is not None and "=" in source:
        extra, source = [source], None
    if mode is not None and mode not in MODES:
        raise LvisctlError(f"--mode must be 'missing' or 'unlabeled', got {mode!r}")
    if source is None:
        return (MODES[mode] if mode else "lvis"), extra
    if source not in SOURCES:
        raise LvisctlError(f"pseudolabel: SOURCE must be one of {', '.join(SOURCES)}, got {source!r}")
    if mode is not None and SOURCES[source] != mode:
        raise LvisctlError(f"pseudolabel {source}: contradicts --mode {mode}")
    return source, extra


def register(app: typer.Typer) -> None:
    app.command("pseudolabel")(pseudolabel_command)
