"""``lvisctl visualize``: ground truth and predictions drawn on images (masks, boxes, names, scores)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from lvisctl.cli._command import command, job_from, note
from lvisctl.cli._options import GtOption, ImageRootOption, MaxImagesOption, OverwriteOption, RunDirOption


@dataclass(kw_only=True)
class VisualizeOptions:
    """The options of ``lvisctl visualize``, in ``--help`` order."""

    run_dir: RunDirOption
    images: Annotated[
        Path | None,
        typer.Option(
            "--images", help="Image folder or LVIS / image-info json (default: the ground truth's images)."
        ),
    ] = None
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="LVIS results file (default: the run's newest predictions, pseudo-labelling's excluded).",
        ),
    ] = None
    gt: GtOption = None
    image_root: ImageRootOption = None
    categories: Annotated[
        str | None,
        typer.Option("--categories", help="Only these: names or ids (a,b,17), or frequency groups (r, r,c)."),
    ] = None
    score_thresh: Annotated[
        float, typer.Option("--score-thresh", min=0.0, max=1.0, help="Predictions >= this.")
    ] = 0.3
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the PNGs (default DIR/visualize/<name>/).")
    ] = None
    max_images: MaxImagesOption = 16
    topk: Annotated[
        int | None,
        typer.Option(
            "--topk", min=1, help="Draw each image's K best predictions instead of those >= --score-thresh."
        ),
    ] = None
    overwrite: OverwriteOption = False


@command(VisualizeOptions)
def visualize_command(o: VisualizeOptions) -> None:
    """Draw masks, boxes, category names and scores on images: one PNG per image (ground truth and
    predictions side by side when both are known) and a contact sheet. Colours are fixed per category."""
    from rich.console import Console

    from lvisctl.data.remembered import default_image_root
    from lvisctl.visualization.render import VisualizeJob, visualize

    image_root = default_image_root(o.run_dir, o.image_root, note)
    result = visualize(job_from(VisualizeJob, o, image_root=image_root))
    console = Console(highlight=False, soft_wrap=True)
    scored = ", ".join(str(p) for p in (result.predictions, result.gt) if p is not None)
    console.print(
        f"drew {result.instances} instances on {len(result.pngs)} images from {scored}", markup=False
    )
    console.print(f"PNGs in {result.out_dir}; contact sheet {result.contact_sheet}", markup=False)
    if result.predictions is not None and result.kept == 0 and o.topk is None:
        best = "no predictions" if result.max_score is None else f"max score {result.max_score:.2f}"
        typer.echo(
            f"0 predictions >= {o.score_thresh:g} ({best}); lower --score-thresh or pass --topk 5", err=True
        )
    if result.skipped:
        from lvisctl.visualization.render import skip_line

        typer.echo(f"warning: {skip_line(result.skipped)}", err=True)


def register(app: typer.Typer) -> None:
    app.command("visualize")(visualize_command)
