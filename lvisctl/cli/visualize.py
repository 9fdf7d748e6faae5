"""``lvisctl visualize``: ground truth and predictions drawn on images (masks, boxes, names, scores)."""

from __future__ import annotations

from pathlib import Path

import typer


def visualize_command(
    run_dir: Path = typer.Option(..., "--run-dir", help="Run directory (default inputs; PNGs go under it)."),
    images: Path | None = typer.Option(
        None, "--images", help="Image folder or LVIS / image-info json (default: the ground truth's images)."
    ),
    predictions: Path | None = typer.Option(
        None,
        "--predictions",
        help="LVIS results file (default: the run's newest predictions, pseudo-labelling's excluded).",
    ),
    gt: Path | None = typer.Option(
        None, "--gt", help="LVIS annotation file (default: the one the predictions were made on)."
    ),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder the json's image paths are relative to."
    ),
    categories: str | None = typer.Option(
        None, "--categories", help="Only these: names or ids (a,b,17), or frequency groups (r, r,c)."
    ),
    score_thresh: float = typer.Option(0.3, "--score-thresh", min=0.0, max=1.0, help="Predictions >= this."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for the PNGs (default DIR/visualize/<name>/)."
    ),
    max_images: int = typer.Option(16, "--max-images", min=1, help="Images to draw."),
    topk: int | None = typer.Option(
        None, "--topk", min=1, help="Draw each image's K best predictions instead of those >= --score-thresh."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing PNGs."),
) -> None:
    """Draw masks, boxes, category names and scores on images: one PNG per image (ground truth and
    predictions side by side when both are known) and a contact sheet. Colours are fixed per category."""
    from rich.console import Console

    from lvisctl.data.remembered import default_image_root
    from lvisctl.visualization.render import VisualizeJob, visualize

    image_root = default_image_root(run_dir, image_root, lambda line: typer.echo(line, err=True))
    job = VisualizeJob(
        run_dir,
        images=images,
        predictions=predictions,
        gt=gt,
        image_root=image_root,
        categories=categories,
        score_thresh=score_thresh,
        out=out,
        max_images=max_images,
        overwrite=overwrite,
        topk=topk,
    )
    result = visualize(job)
    console = Console(highlight=False, soft_wrap=True)
    scored = ", ".join(str(p) for p in (result.predictions, result.gt) if p is not None)
    console.print(
        f"drew {result.instances} instances on {len(result.pngs)} images from {scored}", markup=False
    )
    console.print(f"PNGs in {result.out_dir}; contact sheet {result.contact_sheet}", markup=False)
    if result.predictions is not None and result.kept == 0 and topk is None:
        best = "no predictions" if result.max_score is None else f"max score {result.max_score:.2f}"
        typer.echo(
            f"0 predictions >= {score_thresh:g} ({best}); lower --score-thresh or pass --topk 5", err=True
        )
    if result.skipped:
        from lvisctl.visualization.render import skip_line

        typer.echo(f"warning: {skip_line(result.skipped)}", err=True)


def register(app: typer.Typer) -> None:
    app.command("visualize")(visualize_command)
