"""``lvisctl analyze masks``: mask quality with oracle boxes (is it the box or the mask?)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from lvisctl.cli._command import command, job_from, note
from lvisctl.cli._options import (
    CheckpointsOption,
    ImageRootOption,
    MaxImagesOption,
    OverwriteOption,
    RunDirOption,
)

analyze_app = typer.Typer(
    help="Analyses that separate what the detector got wrong from what the mask head got wrong.",
    no_args_is_help=True,
)


@dataclass(kw_only=True)
class MasksOptions:
    """The options of ``lvisctl analyze masks``, in ``--help`` order."""

    run_dir: RunDirOption
    checkpoint: CheckpointsOption = None
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="LVIS annotation file whose GT boxes are given to the mask head; default: the run's "
            "synthetic val split.",
        ),
    ] = None
    image_root: ImageRootOption = None
    scale: Annotated[
        int | None,
        typer.Option(
            "--scale",
            min=1,
            help="Test scale (short side, px); default: the checkpoint's first inference.scales entry.",
        ),
    ] = None
    max_size: Annotated[
        int | None,
        typer.Option(
            "--max-size", min=1, help="Cap on the long side at test time; default: inference.max_size."
        ),
    ] = None
    max_images: MaxImagesOption = None
    out_stem: Annotated[
        str, typer.Option("--name", help="Output name: RUN/analysis/<name>.json and .png.")
    ] = "mask_quality"
    overwrite: OverwriteOption = False


@analyze_app.command("masks")
@command(MasksOptions)
def masks(o: MasksOptions) -> None:
    """Run the mask head on the ground-truth boxes and categories (no detection involved) and report
    mean mask IoU and Boundary IoU per frequency group and mask/box area-ratio bin, plus the oracle-box
    mask AP (each GT box as a detection with score 1)."""
    from rich.console import Console

    from lvisctl.analysis.analyze_masks import MaskAnalysisJob
    from lvisctl.cli._progress import ImagesProgress

    with ImagesProgress("analyze masks") as progress:
        job = job_from(
            MaskAnalysisJob, o, notify=note, on_start=progress.start, on_image=lambda: progress.advance(1)
        )
        outcome = job.run()
    console = Console()
    console.print(quality_table(outcome.analyses))
    scored = ", ".join(str(a.checkpoint) for a in outcome.analyses)
    console.print(f"scored {outcome.images} with {scored}", highlight=False, markup=False)
    console.print(f"wrote {outcome.json_path} and .png", highlight=False, markup=False)


def quality_table(analyses):
    """Rows: frequency group x area-ratio bin; columns: mean mask IoU / Boundary IoU per checkpoint and,
    with two or more checkpoints, the last minus the first (the stage-2 gain)."""
    from rich.table import Table

    from lvisctl.analysis.mask_quality import GROUPS, RATIO_BINS

    table = Table(title="Mask quality with oracle boxes (mean IoU, %)")
    table.add_column("group")
    table.add_column("mask/box")
    table.add_column("n", justify="right")
    for a in analyses:
        table.add_column(f"{a.label} mask", justify="right")
        table.add_column(f"{a.label} bdry", justify="right")
    if len(analyses) > 1:
        table.add_column("delta mask", justify="right")
        table.add_column("delta bdry", justify="right")
    for group in GROUPS:
        for label in ("all", *(b[0] for b in RATIO_BINS)):
            cells = [a.table[group][label] for a in analyses]
            row = [group, label, str(cells[0]["count"])]
            for c in cells:
                row += [_pct(c["mask_iou"]), _pct(c["boundary_iou"])]
            if len(analyses) > 1:
                row += [
                    _delta(cells[-1]["mask_iou"], cells[0]["mask_iou"]),
                    _delta(cells[-1]["boundary_iou"], cells[0]["boundary_iou"]),
                ]
            table.add_row(*row)
        table.add_section()
    ap_row = ["oracle-box mask AP", "", ""]
    for a in analyses:
        ap_row += [_pct(a.oracle_ap.get("AP")), ""]
    if len(analyses) > 1:
        ap_row += [_delta(analyses[-1].oracle_ap.get("AP"), analyses[0].oracle_ap.get("AP")), ""]
    table.add_row(*ap_row)
    return table


def _pct(value) -> str:
    return "-" if value is None or value < 0 else f"{100 * value:.1f}"


def _delta(new, old) -> str:
    if new is None or old is None or new < 0 or old < 0:
        return "-"
    return f"{100 * (new - old):+.1f}"


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
