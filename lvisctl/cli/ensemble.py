"""``lvisctl ensemble``: fuse several LVIS results files of the same images (different checkpoints, models
or TTA settings) into one, boxes by ensemble-boxes (weighted boxes fusion by default), masks by a
pixel-wise weighted vote of the fused members (``lvisctl.inference.ensemble``)."""

from __future__ import annotations

from pathlib import Path

import typer

from lvisctl.cli.tta_infer import EXIT_INCOMPLETE
from lvisctl.inference.ensemble_checks import check_iou, check_skip_score


def _checked(check):
    """A typer callback: the option is checked while the command line is parsed (before any file)."""
    return lambda value: check(value)


def ensemble_command(
    results: list[Path] = typer.Argument(
        ...,
        help="Results files: a tta-infer pair (X.segm.json, its X.bbox.json is joined) or a full LVIS "
        "results file with segmentations.",
    ),
    out: Path = typer.Option(..., "--out", help="Output X.json: writes X.segm.json and X.bbox.json."),
    weights: str | None = typer.Option(
        None, "--weights", help="One weight per results file, e.g. 2,1 (default: equal)."
    ),
    method: str = typer.Option("wbf", "--method", help="wbf (weighted boxes fusion), nms or soft-nms."),
    iou: float = typer.Option(
        0.55,
        "--iou",
        help="IoU at which same-class boxes are fused / suppressed, in (0, 1].",
        callback=_checked(check_iou),
    ),
    skip_score: float = typer.Option(
        0.0,
        "--skip-score",
        help="wbf ignores boxes scoring below this, in [0, 1).",
        callback=_checked(check_skip_score),
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="LVIS / image-info json of the images: checks ids and sizes (and lets a model miss an image).",
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory: the output is registered there with its inputs."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    chunk_size: int = typer.Option(500, "--chunk-size", min=1, help="Images per resumable chunk."),
    max_chunks: int | None = typer.Option(
        None, "--max-chunks", min=0, help="Stop after this many new chunks; rerun the command to continue."
    ),
) -> None:
    """Fuse results files (at most 300 detections per image); the output is an ordinary results file
    pair that evaluate and submit take. Resumable: rerun the same command after an interruption."""
    from rich.console import Console

    from lvisctl.engine.distributed import cleanup_distributed
    from lvisctl.inference.ensemble import EnsembleJob
    from lvisctl.inference.ensemble_checks import parse_weights

    weight_list = parse_weights(weights, len(results)) if weights is not None else None
    job = EnsembleJob(
        results,
        out,
        weights=weight_list,
        method=method,
        iou_thr=iou,
        skip_box_thr=skip_score,
        images=images,
        run_dir=run_dir,
        overwrite=overwrite,
        chunk_size=chunk_size,
        max_chunks=max_chunks,
    )
    try:
        outcome = job.run()
    finally:
        cleanup_distributed()
    if not outcome.is_main:
        return
    if not outcome.complete:
        typer.echo(
            f"stopped by --max-chunks before all {outcome.chunks_total} chunks were done; rerun the same "
            "command to continue",
            err=True,
        )
        raise typer.Exit(EXIT_INCOMPLETE)
    Console().print(
        f"ensemble ({method}) of {len(results)} results files: {outcome.images} images, {outcome.detections} "
        f"detections, {outcome.seconds:.1f} s -> {outcome.paths['segm']} (segm) and {outcome.paths['bbox']} "
        "(bbox)",
        highlight=False,
        soft_wrap=True,
    )
    if outcome.empty_dropped:
        from lvisctl.inference.results import empty_dropped_line

        Console().print(empty_dropped_line(outcome.empty_dropped), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("ensemble")(ensemble_command)
