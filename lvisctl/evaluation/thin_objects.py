"""Mask AP on thin objects versus the rest: the paper's thesis in one number.

"A good box is not a guarantee of a good mask": categories whose instances have large boxes but small
masks (mask/box area ratio well below 0.25) are where box-scale RoI assignment and plain BCE fail. A
category counts as *thin* when the median mask/box area ratio of its ground-truth instances is below
``thresh`` (LVIS ``area`` is the mask area); mask AP is then averaged over the thin categories and over
the rest, from the per-category AP that ``evaluate`` computes (categories without ground truth in the
split are left out, as LVIS does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np


def median_area_ratio(annotations: Iterable[Mapping]) -> dict[int, float]:
    """Median ``area / (w * h)`` per category id over the given LVIS annotations."""
    ratios: dict[int, list[float]] = {}
    for ann in annotations:
        w, h = float(ann["bbox"][2]), float(ann["bbox"][3])
        if w > 0 and h > 0:
            ratios.setdefault(int(ann["category_id"]), []).append(float(ann["area"]) / (w * h))
    return {cat: float(np.median(r)) for cat, r in ratios.items()}


def thin_categories(annotations: Iterable[Mapping], thresh: float = 0.25) -> set[int]:
    """Category ids whose median mask/box area ratio is below ``thresh``."""
    return {cat for cat, ratio in median_area_ratio(annotations).items() if ratio < thresh}


def ap_thin_vs_rest(per_category_ap: Mapping[int, float], thin: set[int]) -> dict[str, float]:
    """Mean AP over thin categories and over the others (NaN entries = no ground truth, skipped)."""

    def mean(cats: list[int]) -> float:
        vals = [per_category_ap[c] for c in cats if not math.isnan(per_category_ap[c])]
        return float(np.mean(vals)) if vals else float("nan")

    cats = list(per_category_ap)
    return {
        "AP_thin": mean([c for c in cats if c in thin]),
        "AP_rest": mean([c for c in cats if c not in thin]),
        "num_thin": sum(1 for c in cats if c in thin and not math.isnan(per_category_ap[c])),
        "num_rest": sum(1 for c in cats if c not in thin and not math.isnan(per_category_ap[c])),
    }
