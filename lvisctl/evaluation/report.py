"""Side-by-side comparison of training phases (the demo's summary and the Table 2 ablation)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.table import Table

from lvisctl.evaluation.thin_objects import ap_thin_vs_rest

COLUMNS = ("AP", "APr", "APc", "APf", "AP bbox", "gap", "AP thin", "AP rest")


def phase_row(metrics: Mapping[str, Any], segm_per_category: Mapping[int, float], thin: set[int]) -> dict:
    """The comparison numbers of one phase from ``evaluate``'s metrics and per-category mask AP."""
    segm, bbox = metrics["segm"], metrics.get("bbox", {})
    split = ap_thin_vs_rest(segm_per_category, thin)
    return {
        "AP": segm["AP"],
        "APr": segm["APr"],
        "APc": segm["APc"],
        "APf": segm["APf"],
        "AP bbox": bbox.get("AP", math.nan),
        "gap": bbox.get("AP", math.nan) - segm["AP"],
        "AP thin": split["AP_thin"],
        "AP rest": split["AP_rest"],
    }


def comparison_table(rows: Mapping[str, Mapping[str, float]], *, title: str) -> Table:
    """A rich table, one row per phase, values in percent."""
    table = Table(title=title)
    table.add_column("phase")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for name, row in rows.items():
        cells = ["n/a" if math.isnan(row[c]) else f"{100 * row[c]:.1f}" for c in COLUMNS]
        table.add_row(name, *cells)
    return table
