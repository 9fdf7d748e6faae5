"""``lvisctl evaluate``: official LVIS v1 metrics (plus Boundary / Fixed AP) of a results file."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    results: Path | None = typer.Argument(
        None,
        help="LVIS results json; default: from --run-dir, segm on the newest segm predictions and bbox on "
        "the bbox file of the same tta-infer run.",
    ),
    gt: Path | None = typer.Option(
        None,
        "--gt",
        help="LVIS v1 annotation file (required with RESULTS; with --run-dir alone: the predictions' gt).",
    ),
    iou_type: str = typer.Option("segm,bbox", "--iou-type", help="Comma-separated: segm, bbox."),
    metrics: str = typer.Option("", "--metrics", help="Extra metrics, comma-separated: boundary, fixed."),
    out: Path | None = typer.Option(None, "--out", help="Metrics json (csv and png are written next to it)."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory: inputs from and outputs to it."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Compute the LVIS v1 federated metrics (AP, APr/c/f, AR@300, ...) exactly as lvis-api 0.5.3 does."""
    from rich.console import Console

    from lvisctl.evaluation.lvis_metrics import IOU_TYPES
    from lvisctl.evaluation.pipeline import (
        EXTRA_METRICS,
        SCORED_KEY,
        parse_list,
        run_evaluate,
        scored_lines,
    )

    outcome = run_evaluate(
        results,
        gt=gt,
        iou_types=parse_list(iou_type, IOU_TYPES, "--iou-type"),
        extras=parse_list(metrics, EXTRA_METRICS, "--metrics"),
        out=out,
        run_dir=run_dir,
        overwrite=overwrite,
    )
    console = Console()
    for line in scored_lines(outcome.metrics[SCORED_KEY]):  # user paths: printed unmarked
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(metrics_table(outcome.metrics))
    for note in outcome.notes:
        console.print(note, style="yellow", highlight=False, soft_wrap=True)  # one line
    for path in outcome.written:
        console.print(f"wrote {path}", markup=False, highlight=False)


def metrics_table(metrics: dict):
    """Rows: metric keys; columns: each iou type and extra metric (values in %, as papers print them)."""
    from rich.table import Table

    from lvisctl.evaluation.lvis_metrics import METRIC_KEYS

    columns = [(t, metrics[t]) for t in ("segm", "bbox") if t in metrics]
    for name in ("boundary", "fixed"):
        columns += [(f"{name} {t}", m) for t, m in metrics.get(name, {}).items()]
    table = Table(title="LVIS v1 metrics (%)")
    table.add_column("metric")
    for label, _ in columns:
        table.add_column(label, justify="right")
    for key in METRIC_KEYS:
        table.add_row(key, *[_fmt(m.get(key)) for _, m in columns])
    if "bbox_minus_segm" in metrics:
        table.add_section()
        gap = metrics["bbox_minus_segm"]["AP"]
        table.add_row("AP bbox - segm", *([f"{100 * gap:.2f}"] + [""] * (len(columns) - 1)))
    return table


def _fmt(value) -> str:
    if value is None:
        return ""
    return "n/a" if value < 0 else f"{100 * value:.2f}"


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
