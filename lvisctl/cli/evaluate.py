"""``lvisctl evaluate``: official LVIS v1 metrics (plus Boundary / Fixed AP) of a results file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text  # user text (file and category names): never parsed as markup

from lvisctl.cli._command import command
from lvisctl.cli._options import (
    ExtraMetricList,
    GtOption,
    IouTypeList,
    OptionalRunDirOption,
    OverwriteOption,
)

RESULTS_HELP = (
    "LVIS results json (X.segm.json: bbox is scored on the X.bbox.json beside it); default: from --run-dir, "
    "segm on the newest segm predictions and bbox on the bbox file of the same tta-infer run."
)


@dataclass(kw_only=True)
class EvaluateOptions:
    """The options of ``lvisctl evaluate``, in ``--help`` order."""

    results: Annotated[Path | None, typer.Argument(help=RESULTS_HELP)] = None
    gt: GtOption = None
    iou_type: Annotated[IouTypeList, typer.Option("--iou-type", help="Comma-separated: segm, bbox.")] = (
        "segm,bbox"
    )
    metrics: Annotated[
        ExtraMetricList,
        typer.Option(
            "--metrics", help="Extra metrics, comma-separated: boundary (Boundary AP), fixed (Fixed AP)."
        ),
    ] = ""
    out: Annotated[
        Path | None, typer.Option("--out", help="Metrics json (csv and png are written next to it).")
    ] = None
    run_dir: OptionalRunDirOption = None
    overwrite: OverwriteOption = False
    per_category: Annotated[
        bool,
        typer.Option(
            "--per-category",
            help="Also print the best and worst categories of each frequency group (r/c/f); the csv has all.",
        ),
    ] = False
    top: Annotated[
        int, typer.Option("--top", min=1, help="How many best and worst categories --per-category shows.")
    ] = 5
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            "--compare",
            help="Print two metrics json files (A B) side by side with B - A, as the paper's Table 2; "
            "evaluates nothing.",
        ),
    ] = None


@command(EvaluateOptions)
def evaluate(o: EvaluateOptions) -> None:
    """Compute the LVIS v1 federated metrics (AP, APr/c/f, AR@300, ...) exactly as lvis-api 0.5.3 does."""
    from rich.console import Console

    if o.compare is not None:
        if o.results is not None or o.run_dir is not None:
            from lvisctl.errors import LvisctlError

            raise LvisctlError("--compare A B: reads two metrics files; give no RESULTS or --run-dir with it")
        table, lines = compare_table(*o.compare)
        console = Console()
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print(table)
        return

    from lvisctl.evaluation.lvis_metrics import IOU_TYPES
    from lvisctl.evaluation.pipeline import (
        EXTRA_METRICS,
        SCORED_KEY,
        parse_list,
        run_evaluate,
        scored_lines,
    )

    outcome = run_evaluate(
        o.results,
        gt=o.gt,
        iou_types=parse_list(o.iou_type, IOU_TYPES, "--iou-type"),
        extras=parse_list(o.metrics, EXTRA_METRICS, "--metrics"),
        out=o.out,
        run_dir=o.run_dir,
        overwrite=o.overwrite,
    )
    console = Console()
    for line in scored_lines(outcome.metrics[SCORED_KEY]):  # user paths: printed unmarked
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(metrics_table(outcome.metrics))
    if o.per_category:
        for t, m in outcome.by_type.items():
            console.print(per_category_table(m.per_category_ap, outcome.categories, t, o.top))
    for note in outcome.notes:
        console.print(note, style="yellow", highlight=False, soft_wrap=True)  # one line
    for path in outcome.written:
        console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


def metrics_table(metrics: dict):
    """Rows: metric keys; columns: each iou type and extra metric (values in %, as papers print them)."""
    from rich.table import Table

    from lvisctl.evaluation.lvis_metrics import METRIC_KEYS

    columns = [(t, metrics[t]) for t in ("segm", "bbox") if t in metrics]
    for name in ("boundary", "fixed"):
        columns += [(f"{name} {t}", m) for t, m in metrics.get(name, {}).items()]
    version = metrics.get("scored", {}).get("lvis_version", "v1")  # what the gt file is
    table = Table(title=f"LVIS {version} metrics (%)")
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


def compare_table(a: Path, b: Path):
    """Two metric files and their difference, in the paper's Table 2 columns (values in %), and the lines
    that say which file is A and which B."""
    import math

    from rich.table import Table

    from lvisctl.evaluation.compare import COMPARE_COLUMNS, compare_rows

    rows, lines = compare_rows(a, b)
    table = Table(title="LVIS v1 (%), gap = AP bbox - AP")
    table.add_column("")
    for col in COMPARE_COLUMNS:
        table.add_column(col, justify="right")
    for k, (name, row) in enumerate(rows.items()):
        if k == 2:
            table.add_section()
        sign = "+" if k == 2 else ""
        cells = ["n/a" if math.isnan(row[c]) else f"{100 * row[c]:{sign}.2f}" for c in COMPARE_COLUMNS]
        table.add_row(name, *cells)
    return table, lines


def per_category_table(per_category_ap: dict, categories: dict, iou_type: str, k: int):
    """Per frequency group, the ``k`` best and ``k`` worst categories by AP (values in %)."""
    from rich.table import Table

    from lvisctl.evaluation.compare import best_and_worst

    table = Table(title=f"{iou_type} AP (%): best / worst {k} categories")
    for col in ("freq", "best", "AP", "worst", "AP"):
        table.add_column(col, justify="right" if col == "AP" else "left")
    for freq, (best, worst) in best_and_worst(per_category_ap, categories, k).items():
        if not best:
            table.add_row(freq, "(no category with ground truth)", "", "", "")
            continue
        for i in range(max(len(best), len(worst))):
            cells = [freq if i == 0 else ""]
            for side in (best, worst):
                cat, ap = side[i] if i < len(side) else (None, None)
                cells += ["", ""] if cat is None else [_cat_name(categories, cat), f"{100 * ap:.2f}"]
            table.add_row(*[Text(c) for c in cells])
        table.add_section()
    return table


def _cat_name(categories: dict, cat: int) -> str:
    return f"{categories[cat]['name']} ({cat})"


def _fmt(value) -> str:
    if value is None:
        return ""
    return "n/a" if value < 0 else f"{100 * value:.2f}"


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
