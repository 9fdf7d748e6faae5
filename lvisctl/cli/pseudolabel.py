"""``lvisctl pseudolabel``: self-training pseudo labels (paper section 2.1).

Several GPUs / nodes: ``torchrun --nproc_per_node 8 -m lvisctl pseudolabel --run-dir DIR --images ...``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lvisctl.cli._options import PseudoMode
from lvisctl.cli._progress import ImagesProgress


def pseudolabel_command(
    run_dir: Path = typer.Option(..., "--run-dir", help="Run directory holding the checkpoint."),
    images: Path = typer.Option(
        ..., "--images", help="LVIS train json (--mode missing) or an image-info json of unlabeled images."
    ),
    mode: PseudoMode = typer.Option(
        "missing",
        "--mode",
        help="missing: confident boxes on LVIS train that overlap no ground truth, used as ignore regions; "
        "unlabeled: confident detections (with masks) on extra images, trained jointly with a loss weight.",
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Default: the run's newest final one."),
    score_thresh: float = typer.Option(
        0.5, "--score-thresh", min=0.0, max=1.0, help="Keep detections >= this."
    ),
    max_gt_iou: float = typer.Option(
        0.0,
        "--max-gt-iou",
        min=0.0,
        max=1.0,
        help="missing mode: keep boxes whose IoU with every GT box is <= this.",
    ),
    max_per_image: int = typer.Option(50, "--max-per-image", min=1, help="unlabeled mode: labels per image."),
    scales: str | None = typer.Option(None, "--scales", help="Test scale(s), e.g. 800 or 600,800."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder the image paths are relative to."
    ),
    out: Path | None = typer.Option(None, "--out", help="Default DIR/pseudo_labels/<images>_<mode>.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing pseudo-label file."),
    overrides: list[str] | None = typer.Argument(
        None, help="key.sub=value overrides of the checkpoint's config."
    ),
) -> None:
    """Predict on IMAGES and keep confident detections as pseudo labels (an LVIS json in the run dir).

    Train with them: `lvisctl train --stage 1 ... data.pseudo_labels=<missing file>` (ignore regions) and
    `data.extra_images=<unlabeled file>` (joint training, data.extra_per_epoch images per epoch, weight
    data.extra_loss_weight).
    """
    from rich.console import Console

    from lvisctl.engine.distributed import cleanup_distributed
    from lvisctl.errors import LvisctlError
    from lvisctl.inference.pseudo_labels import make_pseudo_labels
    from lvisctl.inference.runner import parse_scales

    if mode not in ("missing", "unlabeled"):
        raise LvisctlError(f"--mode must be 'missing' or 'unlabeled', got {mode!r}")
    with ImagesProgress() as progress:
        try:
            artifact = make_pseudo_labels(
                run_dir,
                images,
                mode=mode,
                checkpoint=checkpoint,
                scales=parse_scales(scales) if scales else None,
                image_root=image_root,
                score_thresh=score_thresh,
                max_gt_iou=max_gt_iou,
                max_per_image=max_per_image,
                out=out,
                overwrite=overwrite,
                overrides=overrides or [],
                on_start=progress.start,
                on_images=progress.advance,
            )
        finally:
            cleanup_distributed()
    if artifact is not None:
        m = artifact.meta
        Console().print(
            f"{m['num_labels']} pseudo labels ({mode}) on {m['num_images']} images -> {artifact.path}"
        )


def register(app: typer.Typer) -> None:
    app.command("pseudolabel")(pseudolabel_command)
