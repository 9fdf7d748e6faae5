"""``lvisctl tta-infer``: predictions of a checkpoint on an LVIS split, as LVIS results files.

Two files per run: ``<stem>.segm.json`` (masks, no boxes, so lvis-api uses mask areas for the mask
metrics; what ``submit`` uploads) and ``<stem>.bbox.json`` (boxes).

``--tta paper`` runs the paper's test-time augmentation (``lvisctl.inference.tta``); repeating
``--checkpoint`` fuses several models' outputs per image (``lvisctl.inference.ensemble``).

Several GPUs / nodes: ``torchrun --nproc_per_node 8 -m lvisctl tta-infer --run-dir DIR --images val.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from lvisctl.cli._command import command, job_from, note, stopped_by_max_chunks
from lvisctl.cli._options import (
    CheckpointsOption,
    ImageListOption,
    ImageRootOption,
    MaxChunksOption,
    OverridesArgument,
    OverwriteOption,
    RunDirOption,
    ScalesOption,
    TtaMode,
)
from lvisctl.cli._progress import ImagesProgress


@dataclass(kw_only=True)
class TtaInferOptions:
    """The options of ``lvisctl tta-infer``, in ``--help`` order."""

    run_dir: RunDirOption
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            help="LVIS annotation file, test-dev image-info json, or a folder of images (jpg/png, recursive; "
            "an image-info json with stable ids is written next to the results); a builtin name "
            "(lvis_v1_val); val / test = the run's remembered data.val / data.test_info (default: val).",
        ),
    ] = None
    checkpoint: CheckpointsOption = None
    tta: Annotated[
        TtaMode | None,
        typer.Option(
            "--tta",
            help="plain: the scales merged by NMS (default); paper: section 3.3 (flip, valid box range per "
            "scale, rare boost, NMS 0.7 + Soft-NMS, mask from the right scale; keys inference.tta.*).",
        ),
    ] = None
    scales: ScalesOption = None
    image_root: ImageRootOption = None
    image_list: ImageListOption = None
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Refuse unreadable images up front instead of skipping and listing them."
        ),
    ] = False
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Results path X.json: writes X.segm.json and X.bbox.json "
            "(default DIR/predictions/<images>_<checkpoint>_s<scales>.json).",
        ),
    ] = None
    overwrite: OverwriteOption = False
    map_by_name: Annotated[
        bool,
        typer.Option(
            "--map-by-name",
            help="The checkpoint's categories differ from the json's (ids or names): map its classes onto "
            "the json's ids by category name (classes the json lacks are not predicted). Without it such "
            "a pair is refused.",
        ),
    ] = False
    max_chunks: MaxChunksOption = None
    overrides: OverridesArgument = None


@command(TtaInferOptions, distributed=True)
def tta_infer_command(o: TtaInferOptions) -> None:
    """Run a checkpoint on every image and write LVIS results files (top 300 per image, RLE masks).

    Resumable: finished chunks are kept in DIR/.partial/ and a rerun continues from them.
    """
    from lvisctl.data.remembered import inference_inputs
    from lvisctl.inference.predict_job import PredictJob, images_for_run, parse_scales

    scale_list = parse_scales(o.scales) if o.scales is not None else None
    images, image_root = inference_inputs(o.run_dir, o.images, o.image_root, note)
    images, image_root = images_for_run(o.run_dir, images, image_root, o.image_list, o.checkpoint)
    with ImagesProgress("tta-infer") as progress:
        job = job_from(
            PredictJob,
            o,
            images=images,
            scales=scale_list,
            image_root=image_root,
            overrides=o.overrides or [],
            on_start=progress.start,
            on_images=progress.advance,
        )
        outcome = job.run()
    if not outcome.is_main:
        return
    if not outcome.artifacts:
        raise stopped_by_max_chunks(outcome.summary.chunks_total, outcome.summary.chunks_resumed)
    _print_summary(outcome)


def _print_summary(outcome) -> None:
    from rich.console import Console
    from rich.table import Table

    s = outcome.summary
    table = Table(title="tta-infer", show_header=True)
    for col in (
        "images",
        "detections",
        "det/image",
        "seconds",
        "images/s",
        "chunks (new/resumed)",
        "processes",
    ):
        table.add_column(col, justify="right")
    rate = f"{s.images_computed / s.seconds:.2f}" if s.images_computed and s.seconds > 0 else "-"
    table.add_row(
        str(s.images),
        str(s.detections),
        f"{s.detections / max(s.images, 1):.1f}",
        f"{s.seconds:.1f}",
        rate,
        f"{s.chunks_total - s.chunks_resumed}/{s.chunks_resumed}",
        str(outcome.world_size),
    )
    console = Console()
    console.print(table)
    paths = outcome.paths
    console.print(
        f"predictions: {paths['segm']} (segm, no boxes: mask areas) and {paths['bbox']} (bbox)  "
        f"(scales {outcome.scales}, checkpoint {_models(outcome.artifact.meta)}, "
        f"tta {outcome.artifact.meta.get('tta', 'plain')})",
        highlight=False,
        soft_wrap=True,
    )
    if s.empty_dropped:
        from lvisctl.inference.results import empty_dropped_line

        console.print(empty_dropped_line(s.empty_dropped), highlight=False, soft_wrap=True)


def _models(meta: dict) -> str:
    fused = meta.get("checkpoints")
    return " + ".join(fused) + " (fused)" if fused else str(meta["checkpoint"])


def register(app: typer.Typer) -> None:
    app.command("tta-infer")(tta_infer_command)
