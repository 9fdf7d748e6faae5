"""``lvisctl ensemble``: fuse several LVIS results files of the same images (different checkpoints, models
or TTA settings) into one, boxes by ensemble-boxes (weighted boxes fusion by default), masks by a
pixel-wise weighted vote of the fused members (``lvisctl.inference.ensemble``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from lvisctl.cli._command import command, job_from, stopped_by_max_chunks
from lvisctl.cli._options import MaxChunksOption, OptionalRunDirOption, OverwriteOption
from lvisctl.inference.ensemble_checks import check_iou, check_skip_score


def _checked(flag: str, check: Callable[[float], object], text: str) -> Any:
    """An option (help ``text``) checked while the command line is parsed, before any file is read."""
    return typer.Option(flag, help=text, callback=lambda value: check(value))


@dataclass(kw_only=True)
class EnsembleOptions:
    """The options of ``lvisctl ensemble``, in ``--help`` order."""

    results: Annotated[
        list[Path],
        typer.Argument(
            help="Results files: a tta-infer pair (X.segm.json, its X.bbox.json is joined) or a full LVIS "
            "results file with segmentations.",
        ),
    ]
    out: Annotated[Path, typer.Option("--out", help="Output X.json: writes X.segm.json and X.bbox.json.")]
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="One weight per results file, e.g. 2,1 (default: equal)."),
    ] = None
    method: Annotated[str, typer.Option("--method", help="wbf (weighted boxes fusion), nms or soft-nms.")] = (
        "wbf"
    )
    iou: Annotated[
        float,
        _checked("--iou", check_iou, "IoU at which same-class boxes are fused / suppressed, in (0, 1]."),
    ] = 0.55
    skip_score: Annotated[
        float, _checked("--skip-score", check_skip_score, "wbf ignores boxes scoring below this, in [0, 1).")
    ] = 0.0
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="LVIS / image-info json of the images: checks ids and sizes (and lets a model miss an "
            "image).",
        ),
    ] = None
    run_dir: OptionalRunDirOption = None
    overwrite: OverwriteOption = False
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Images per resumable chunk.")] = 500
    max_chunks: MaxChunksOption = None


@command(EnsembleOptions, distributed=True)
def ensemble_command(o: EnsembleOptions) -> None:
    """Fuse results files (at most 300 detections per image); the output is an ordinary results file
    pair that evaluate and submit take. Resumable: rerun the same command after an interruption."""
    from rich.console import Console

    from lvisctl.inference.ensemble import EnsembleJob
    from lvisctl.inference.ensemble_checks import parse_weights

    weight_list = parse_weights(o.weights, len(o.results)) if o.weights is not None else None
    job = job_from(
        EnsembleJob, o, inputs=o.results, weights=weight_list, iou_thr=o.iou, skip_box_thr=o.skip_score
    )
    outcome = job.run()
    if not outcome.is_main:
        return
    if not outcome.complete:
        raise stopped_by_max_chunks(outcome.chunks_total)
    Console().print(
        f"ensemble ({o.method}) of {len(o.results)} results files: {outcome.images} images, "
        f"{outcome.detections} detections, {outcome.seconds:.1f} s -> {outcome.paths['segm']} (segm) and "
        f"{outcome.paths['bbox']} (bbox)",
        highlight=False,
        soft_wrap=True,
    )
    if outcome.empty_dropped:
        from lvisctl.inference.results import empty_dropped_line

        Console().print(empty_dropped_line(outcome.empty_dropped), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("ensemble")(ensemble_command)
