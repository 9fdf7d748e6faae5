"""``lvisctl pseudolabel SOURCE``: self-training pseudo labels (paper section 2.1).

Several GPUs / nodes: ``torchrun --nproc_per_node 8 -m lvisctl pseudolabel openimages --run-dir DIR ...``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lvisctl.cli._options import PseudoMode
from lvisctl.cli._progress import ImagesProgress

EXIT_INCOMPLETE = 75  # as tta-infer: nothing failed, run the command again (EX_TEMPFAIL)


def pseudolabel_command(
    source: str | None = typer.Argument(
        None,
        help="lvis: missing annotations on LVIS train (ignore regions; default images: the checkpoint's "
        "training json); openimages: unlabeled Open Images (--image-root DIR [--image-list CSV]) for joint "
        "training; images: any image folder or image-info json (same, without Open Images naming).",
        show_default=False,
        metavar="lvis|openimages|images",
    ),
    run_dir: Path = typer.Option(..., "--run-dir", help="Run directory holding the checkpoint."),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="LVIS train json (lvis), or an image folder / image-info json (openimages, images).",
    ),
    image_root: Path | None = typer.Option(
        None,
        "--image-root",
        help="Image folder (searched recursively for jpg/png), or what --images paths are relative to.",
    ),
    image_list: Path | None = typer.Option(
        None,
        "--image-list",
        help="Restrict the folder to a list: Open Images CSV (column ImageID -> ROOT/<ImageID>.jpg), "
        "a CSV with file_name/path, or one id or path per line.",
    ),
    mode: PseudoMode | None = typer.Option(
        None, "--mode", hidden=True, help="Old name of SOURCE: missing = lvis, unlabeled = images."
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Default: the run's newest final stage-1 checkpoint (printed)."
    ),
    score_thresh: str = typer.Option(
        "0.5",
        "--score-thresh",
        help="Keep detections >= this; one number or per frequency group: r=0.3,c=0.4,f=0.5.",
    ),
    max_gt_iou: float = typer.Option(
        0.0, "--max-gt-iou", min=0.0, max=1.0, help="lvis: keep boxes whose IoU with every GT box is <= this."
    ),
    max_per_image: int = typer.Option(
        50, "--max-per-image", min=1, help="openimages/images: labels per image."
    ),
    scales: str | None = typer.Option(None, "--scales", help="Test scale(s), e.g. 800 or 600,800."),
    workers: int = typer.Option(8, "--workers", min=1, help="Threads reading image headers (sizes)."),
    max_chunks: int | None = typer.Option(
        None,
        "--max-chunks",
        min=0,
        help="Stop each process after this many new chunks of inference.chunk_size images (time-limited "
        "jobs); rerun the same command to continue.",
    ),
    out: Path | None = typer.Option(None, "--out", help="Default DIR/pseudo_labels/<images>_<mode>.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing pseudo-label file."),
    overrides: list[str] | None = typer.Argument(
        None, help="key.sub=value overrides of the checkpoint's config."
    ),
) -> None:
    """Predict on images and keep confident detections as pseudo labels (an LVIS json in the run dir).

    Train with them: `lvisctl train --stage 1 ... data.pseudo_labels=latest` (lvis: ignore regions) and
    `data.extra_images=latest` (openimages/images: joint training, data.extra_per_epoch images per
    epoch, weight data.extra_loss_weight).
    """
    from rich.console import Console

    from lvisctl.engine.distributed import cleanup_distributed
    from lvisctl.inference.predict_job import parse_scales
    from lvisctl.inference.pseudo_labels import ScoreThresholds
    from lvisctl.inference.pseudolabel_job import PseudoLabelJob

    source, extra = _source(source, mode)
    thresholds = ScoreThresholds.parse(score_thresh)
    with ImagesProgress("pseudolabel") as progress:
        job = PseudoLabelJob(
            run_dir,
            source,
            images=images,
            image_root=image_root,
            image_list=image_list,
            checkpoint=checkpoint,
            scales=parse_scales(scales) if scales else None,
            score_thresh=thresholds,
            max_gt_iou=max_gt_iou,
            max_per_image=max_per_image,
            out=out,
            overwrite=overwrite,
            overrides=[*extra, *(overrides or [])],
            workers=workers,
            max_chunks=max_chunks,
            on_start=progress.start,
            on_images=progress.advance,
            on_note=_note,
        )
        try:
            outcome = job.run()
        finally:
            cleanup_distributed()
    if outcome.incomplete:
        typer.echo(
            "stopped by --max-chunks before all images were done; rerun the same command to continue",
            err=True,
        )
        raise typer.Exit(EXIT_INCOMPLETE)
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


def _note(line: str) -> None:
    import os

    if int(os.environ.get("RANK", "0")) == 0:  # once under torchrun
        typer.echo(line)


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
