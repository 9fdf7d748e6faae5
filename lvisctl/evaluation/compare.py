"""Reading metrics back: two ``evaluate`` metric files side by side (Table 2 style) and the best and
worst categories of one evaluation per frequency group."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.provenance import gt_mismatch_line
from lvisctl.rundir.io import read_json

# The paper's Table 2 columns: mask AP and its r/c/f split, box AP, and the box-minus-mask gap.
COMPARE_COLUMNS = ("AP", "APr", "APc", "APf", "AP bbox", "gap")
FREQUENCIES = ("r", "c", "f")


def load_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An ``evaluate`` metrics json (``{"segm": {...}, "bbox": {...}, ...}``), or one error line."""
    data = read_json(path)
    if not isinstance(data, dict) or not any(
        isinstance(data.get(t), dict) and "AP" in data[t] for t in ("segm", "bbox")
    ):
        raise LvisctlError(f"{path}: not an lvisctl evaluate metrics json (no 'segm' or 'bbox' AP)")
    for iou_type in ("segm", "bbox"):
        section = data.get(iou_type)
        for key, value in section.items() if isinstance(section, dict) else ():
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise LvisctlError(f"{path}: {iou_type}.{key} is {value!r}, not a number")
    return data


def table2_row(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The Table 2 numbers of one metrics json (NaN where the file lacks them, e.g. bbox not evaluated)."""
    segm, bbox = metrics.get("segm") or {}, metrics.get("bbox") or {}

    def value(d: Mapping[str, Any], key: str) -> float:
        v = d.get(key)
        return math.nan if v is None or v < 0 else float(v)  # lvis-api's -1: undefined

    row = {k: value(segm, k) for k in ("AP", "APr", "APc", "APf")}
    row["AP bbox"] = value(bbox, "AP")
    row["gap"] = row["AP bbox"] - row["AP"]
    return row


def compare_rows(a: Path, b: Path) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Rows ``A``, ``B`` and ``B - A`` of the Table 2 columns, and one line per file saying what it is
    (its path and, when recorded, the results file it scored)."""
    ma, mb = load_metrics(a), load_metrics(b)
    ra, rb = table2_row(ma), table2_row(mb)
    sa, sb = box_source(ma), box_source(mb)
    # A row whose box AP came from another source than the other row's is flagged in its name and a line.
    flag = sa != sb and not (math.isnan(ra["AP bbox"]) or math.isnan(rb["AP bbox"]))
    names = [f"{label} ({BOX_SOURCE_SHORT[src]})" if flag else label for label, src in (("A", sa), ("B", sb))]
    rows = {names[0]: ra, names[1]: rb, "B - A": {k: rb[k] - ra[k] for k in COMPARE_COLUMNS}}
    lines = [f"{label} = {path}{_scored(m)}" for label, path, m in (("A", a, ma), ("B", b, mb))]
    if flag:
        lines.append(
            f"warning: box AP of A comes from {BOX_SOURCE_WORDS[sa]}, of B from {BOX_SOURCE_WORDS[sb]}: "
            "the 'AP bbox' and 'gap' columns do not compare"
        )
    mismatch = gt_mismatch_line(ma, mb)
    return rows, lines + ([mismatch] if mismatch else [])


# ``evaluate`` records under ``scored.results.bbox.boxes`` where the boxes it scored came from.
BOX_SOURCE_SHORT = {"model": "model boxes", "masks": "mask boxes", None: "boxes unrecorded"}
BOX_SOURCE_WORDS = {
    "model": "the model's boxes",
    "masks": "boxes derived from masks",
    None: "an unrecorded source",
}


def box_source(metrics: Mapping[str, Any]) -> str | None:
    """``model`` / ``masks``: the boxes a metrics json's box AP was computed on; None if not recorded."""
    scored = metrics.get("scored")
    entry = scored.get("results", {}).get("bbox") if isinstance(scored, dict) else None
    source = entry.get("boxes") if isinstance(entry, dict) else None
    return source if source in BOX_SOURCE_WORDS else None


def _scored(metrics: Mapping[str, Any]) -> str:
    scored = metrics.get("scored")
    if not isinstance(scored, dict) or not isinstance(scored.get("results"), dict):
        return ""  # written before evaluate recorded its inputs
    files = {entry.get("path") for entry in scored["results"].values() if isinstance(entry, dict)}
    return f" (scored {', '.join(sorted(str(f) for f in files))})"


def best_and_worst(
    per_category_ap: Mapping[int, float], categories: Mapping[int, Mapping[str, Any]], k: int = 5
) -> dict[str, tuple[list[tuple[int, float]], list[tuple[int, float]]]]:
    """Per frequency group: the ``k`` best and ``k`` worst categories by AP (categories without GT, whose
    AP is NaN, are left out; ties by category id). Worst first in the worst list."""
    out = {}
    for freq in FREQUENCIES:
        scored = [
            (c, ap)
            for c, ap in per_category_ap.items()
            if not math.isnan(ap) and categories.get(c, {}).get("frequency") == freq
        ]
        best = sorted(scored, key=lambda x: (-x[1], x[0]))[:k]
        worst = sorted(scored, key=lambda x: (x[1], x[0]))[:k]
        out[freq] = (best, worst)
    return out
