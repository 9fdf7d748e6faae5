"""Settings of the paper's test-time augmentation (``inference.tta``) and its score boost (modification 2).

Split out of :mod:`lvisctl.inference.tta` (which re-exports every name here) to keep that module short.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.inference.soft_nms import SOFT_NMS_METHODS

# The merge of ``mode: paper``: the paper's four modifications in order (lvisctl.inference.merge_steps).
PAPER_STEPS = ("range_filter", "rare_boost", "nms_soft_nms", "mask_from_best_scale")


@dataclass(frozen=True)
class TTASettings:
    """``inference.tta`` of the config (see ``configs/_base_/inference.yaml`` for each key)."""

    scales: tuple[int, ...] = (400, 600, 800, 1000, 1200, 1400)
    max_size: int = 2333
    flip: bool = False  # not in the paper: an extra, off by default
    range_filter: bool = True
    valid_ranges: tuple[tuple[float, float], ...] = (
        (64, math.inf),
        (32, math.inf),
        (0, math.inf),
        (0, 256),
        (0, 192),
        (0, 128),
    )
    rare_boost: bool = True
    rare_factor: float = 1.1
    common_factor: float = 1.0
    soft_nms: bool = True
    nms_iou: float = 0.7
    soft_nms_method: str = "gaussian"
    soft_nms_sigma: float = 0.5
    soft_nms_iou: float = 0.3
    soft_nms_score_thresh: float = 0.001
    mask_from_best_scale: bool = True
    thin_ratio: float = 0.25
    mask_box_size: float = 112.0
    mask_match_iou: float = 0.5
    # the views and the merge as plug-ins (lvisctl.inference.test_augmentations / merge_steps)
    augmentations: tuple[str, ...] = ()  # extra views at every scale besides the plain one (flip adds hflip)
    steps: tuple[str, ...] = PAPER_STEPS
    survivor_masks: bool = True  # the mask head runs only for the merge's survivors (False: every pass's)
    # keys of inference.tta no field above reads: the blocks of merge steps added later (read by their step)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def extra_views(self) -> tuple[str, ...]:
        """The augmentations run at every scale besides the plain view, in order (``flip``: ``hflip``)."""
        return tuple(dict.fromkeys([*(("hflip",) if self.flip else ()), *self.augmentations]))

    @classmethod
    def from_config(cls, tta_cfg: Mapping[str, Any], scales: Sequence[int] | None = None) -> TTASettings:
        """Settings from ``inference.tta``: each field from its key, cast to the field's type; ``scales``
        (``--scales``) replaces ``inference.tta.scales``; the keys no field reads go to ``extra``."""
        scale_list = tuple(int(s) for s in (scales if scales is not None else tta_cfg["scales"]))
        values: dict[str, Any] = {
            "scales": scale_list,
            "valid_ranges": _ranges_for(tta_cfg["valid_ranges"], scale_list, cls.valid_ranges),
        }
        for f in fields(cls):
            if f.name in values or f.name == "extra":
                continue
            # .get: a mapping written before these keys existed (the schema fills them for configs)
            raw = tta_cfg.get(f.name, f.default) if f.name in _ADDED_LATER else tta_cfg[f.name]
            values[f.name] = (
                tuple(str(a) for a in raw) if f.type == "tuple[str, ...]" else _CASTS[f.type](raw)
            )
        settings = cls(**values, extra={k: v for k, v in tta_cfg.items() if k not in _FIELDS})
        settings.check()
        return settings

    def check(self) -> None:
        """User errors in the settings, as one line naming the config key."""
        if not self.scales or min(self.scales) < 1:
            raise LvisctlError("inference.tta.scales: expected positive test scales, e.g. [400, 800, 1200]")
        if self.range_filter and len(self.valid_ranges) != len(self.scales):
            raise LvisctlError(
                f"inference.tta.valid_ranges: {len(self.valid_ranges)} ranges for {len(self.scales)} test "
                f"scales {list(self.scales)}; give one [lo, hi] per scale or set "
                "inference.tta.range_filter=false"
            )
        if self.soft_nms_method not in SOFT_NMS_METHODS:
            raise LvisctlError(
                f"inference.tta.soft_nms_method: {self.soft_nms_method!r} is not one of {SOFT_NMS_METHODS}"
            )
        from lvisctl.inference.test_augmentations import augmentation
        from lvisctl.registry import TTA_MERGE_STEPS

        for name in self.augmentations:
            augmentation(name)  # one line naming the key for an unknown name
        for name in self.steps:
            if name not in TTA_MERGE_STEPS:
                close = difflib.get_close_matches(name, TTA_MERGE_STEPS.names(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise LvisctlError(
                    f"inference.tta.steps: unknown merge step {name!r} "
                    f"(choose from {', '.join(TTA_MERGE_STEPS.names())}){hint}"
                )
        if self.range_filter:
            uncovered = covered_gaps(self.valid_ranges)
            if uncovered:
                lo, hi = uncovered[0]
                raise LvisctlError(
                    f"inference.tta.valid_ranges: no test scale keeps boxes of size {lo:g}-{hi:g} px; "
                    "the ranges must cover every size"
                )


_FIELDS = frozenset(f.name for f in fields(TTASettings)) | {"mode"}
# the scalar fields' types (annotations are strings here: ``from __future__ import annotations``)
_CASTS: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}
_ADDED_LATER = frozenset({"augmentations", "steps", "survivor_masks"})


def _ranges_for(
    value: Any, scales: tuple[int, ...], packaged: tuple[tuple[float, float], ...]
) -> tuple[tuple[float, float], ...]:
    """``valid_ranges`` as given, or derived from the scales for ``auto``."""
    if value == "auto":
        return auto_ranges(scales)
    ranges = tuple((bound(lo, 0.0), bound(hi, math.inf)) for lo, hi in value)
    if ranges == packaged and len(scales) != len(ranges):
        # the packaged ranges are for the packaged six scales: other --scales get ranges by the same rule
        return auto_ranges(scales)
    return ranges


def bound(value: Any, missing: float) -> float:
    """One end of a ``valid_ranges`` pair: a number, ``null`` (no limit: ``missing``) or ``inf``."""
    if value is None:
        return missing
    if isinstance(value, str) and value.strip().lower().lstrip("+.") in ("inf", "infinity"):
        return math.inf
    return float(value)


# The packaged ranges as a function of the scale (lvisctl's choice, not the paper's): below 800 a pass drops
# boxes smaller than LO, above 800 boxes larger than HI, linear between these points and flat beyond them.
_LO_POINTS = ((400, 64.0), (600, 32.0), (800, 0.0))
_HI_POINTS = ((800, math.inf), (1000, 256.0), (1200, 192.0), (1400, 128.0))


def _interp(points: Sequence[tuple[int, float]], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y1 if math.isinf(y0) else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def auto_ranges(scales: Sequence[int]) -> tuple[tuple[float, float], ...]:
    """Per-scale ``[lo, hi)`` for any test scales, equal to the packaged ranges for 400, 600, ..., 1400.

    The smallest scale keeps every large box and the largest every small one, so the ranges always cover
    every size (the largest ``lo`` is 64, below the smallest ``hi``, 128)."""
    lo_scale, hi_scale = min(scales), max(scales)
    return tuple(
        (
            0.0 if s == hi_scale else _interp(_LO_POINTS, s),
            math.inf if s == lo_scale else _interp(_HI_POINTS, s),
        )
        for s in scales
    )


def covered_gaps(ranges: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The box sizes in [0, inf) that no ``[lo, hi)`` range covers."""
    gaps, reach = [], 0.0
    for lo, hi in sorted(ranges):
        if lo > reach:
            gaps.append((reach, lo))
        reach = max(reach, hi)
    if reach < math.inf:
        gaps.append((reach, math.inf))
    return gaps


def class_boost(stats: CategoryStats, settings: TTASettings) -> torch.Tensor:
    """Score factor per contiguous label ``[K + 1]`` (index 0 = background): modification 2."""
    factor = torch.ones(stats.num_classes + 1)
    if settings.rare_boost:
        for i, freq in enumerate(stats.frequency, start=1):
            factor[i] = {"r": settings.rare_factor, "c": settings.common_factor}.get(freq, 1.0)
    return factor


def boost_scores(scores: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Modification 2 without ties: the score's odds ``s / (1 - s)`` times ``factor``.

    ``s * f / (1 + (f - 1) * s)`` is ``s * f`` for small scores (a rare detection at 0.05 becomes 0.055
    with f = 1.1), stays in [0, 1] (the results format's range) and is strictly increasing in ``s``, so the
    order within a class, which AP is computed from, never changes. ``(s * f).clamp(max=1)`` tied every
    rare score above 1 / f at 1.0 and so scrambled their order.
    """
    return scores * factor / (1 + (factor - 1) * scores)
