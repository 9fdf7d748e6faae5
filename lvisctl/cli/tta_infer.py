"""``lvisctl tta-infer``: predictions of a checkpoint on an LVIS split, as LVIS results files.

Two files per run: ``<stem>.segm.json`` (masks, no boxes, so lvis-api uses mask areas for the mask
metrics; what ``submit`` uploads) and ``<stem>.bbox.json`` (boxes).

``--tta paper`` runs the paper's test-time augmentation (``lvisctl.inference.tta``); repeating
``--checkpoint`` fuses several models' outputs per image (``lvisctl.inference.ensemble``).

Several GPUs / nodes: ``torchrun --nproc_per_node 8 -m lvisctl tta-infer --run-dir DIR --images val.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lvisctl.cli._options import TtaMode
from lvisctl.cli._progress import ImagesProgress

# Exit status of a run stopped by --max-chunks: nothing failed, the command is meant to be run again
# (EX_TEMPFAIL); a script chaining `tta-infer && evaluate` must not evaluate an older file meanwhile.
EXIT_INCOMPLETE = 75


def tta_infer_command(
    run_dir: Path = typer.Option(
        ..., "--run-dir", help="Run directory (predictions are written and recorded here)."
    ),
    images: str | None = typer.Option(
        None,
        "--images",
        help="LVIS annotation file, test-dev image-info json, or a folder of images (jpg/png, recursive; "
        "an image-info json with stable ids is written next to the results); a builtin name "
        "(lvis_v1_val); val / test = the run's remembered data.val / data.test_info (default: val).",
    ),
    checkpoint: list[Path] | None = typer.Option(
        None,
        "--checkpoint",
        help="Checkpoint file; default: the run's newest final one (stage 2 before 1). Repeat it to ensemble "
        "several models in one pass (each model's output fused per image, inference.ensemble.*).",
    ),
    tta: TtaMode | None = typer.Option(
        None,
        "--tta",
        help="plain: the scales merged by NMS (default); paper: section 3.3 (flip, valid box range per "
        "scale, rare boost, NMS 0.7 + Soft-NMS, mask from the right scale; keys inference.tta.*).",
    ),
    scales: str | None = typer.Option(
        None,
        "--scales",
        help="Test scale(s), short side in pixels: 800 or 600,800,1000 (default inference.scales, or "
        "inference.tta.scales with --tta paper).",
    ),
    image_root: Path | None = typer.Option(
        None,
        "--image-root",
        help="Folder the image paths are relative to (default: the run's data.image_root, else the "
        "json's folder).",
    ),
    image_list: Path | None = typer.Option(
        None, "--image-list", help="With --images DIR: only these (CSV ImageID / paths)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Refuse unreadable images up front instead of skipping and listing them."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Results path X.json: writes X.segm.json and X.bbox.json "
        "(default DIR/predictions/<images>_<checkpoint>_s<scales>.json).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results files."),
    map_by_name: bool = typer.Option(
        False,
        "--map-by-name",
        help="The checkpoint's categories differ from the json's (ids or names): map its classes onto the "
        "json's ids by category name (classes the json lacks are not predicted). Without it such a pair "
        "is refused.",
    ),
    max_chunks: int | None = typer.Option(
        None,
        "--max-chunks",
        min=0,
        help="Stop each process after this many new chunks of inference.chunk_size images (time-limited "
        "jobs); rerun the same command to continue.",
    ),
    overrides: list[str] | None = typer.Argument(
        None,
        help="Overrides key.sub=value of the checkpoint's config (e.g. inference.batch_size=4).",
    ),
) -> None:
    """Run a checkpoint on every image and write LVIS results files (top 300 per image, RLE masks).

    Resumable: finished chunks are kept in DIR/.partial/ and a rerun continues from them.
    """
    from lvisctl.data.remembered import inference_inputs
    from lvisctl.engine.distributed import cleanup_distributed
    from lvisctl.inference.predict_job import PredictJob, images_for_run, parse_scales

    scale_list = parse_scales(scales) if scales is not None else None
    images, image_root = inference_inputs(run_dir, images, image_root, _note)
    images, image_root = images_for_run(run_dir, images, image_root, image_list, checkpoint)
    with ImagesProgress("tta-infer") as progress:
        job = PredictJob(
            run_dir,
            images,
            checkpoint=checkpoint,
            scales=scale_list,
            tta=tta,
            image_root=image_root,
            out=out,
            overwrite=overwrite,
            overrides=overrides or [],
            max_chunks=max_chunks,
            strict=strict,
            map_by_name=map_by_name,
            on_start=progress.start,
            on_images=progress.advance,
        )
        try:
            outcome = job.run()
        finally:
            cleanup_distributed()
    if not outcome.is_main:
        return
    if outcome.artifacts:
        _print_summary(outcome)
    else:
        s = outcome.summary
        typer.echo(
            f"stopped by --max-chunks before all {s.chunks_total} chunks were done ({s.chunks_resumed} were "
            "done before this run); rerun the same command to continue",
            err=True,
        )
        raise typer.Exit(EXIT_INCOMPLETE)


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


def _note(line: str) -> None:
    import os

    if os.environ.get("RANK", "0") == "0":  # once per job under torchrun
        typer.echo(line, err=True)


def register(app: typer.Typer) -> None:
    app.command("tta-infer")(tta_infer_command)
