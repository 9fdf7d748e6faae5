"""Rules between keys, checked by ``load_config`` before any data or model loads.

Each rule names the keys it reads and returns a one-line problem (naming the key) or None. They run on
values that passed their own checks (``checks.RULES``), so they may take types and lengths for granted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lvisctl.config import dotted

CASCADE = "model.roi_heads.cascade"
CASCADE_LISTS = ("iou_thresholds", "stage_loss_weights", "bbox_reg_weights")


def _cascade_stages(cfg: Mapping[str, Any]) -> str | None:
    """One entry per stage in each of the cascade's per-stage lists."""
    lengths = [len(dotted.get(cfg, f"{CASCADE}.{name}") or ()) for name in CASCADE_LISTS]
    if lengths[0] and len(set(lengths)) == 1:
        return None
    return (
        f"{CASCADE}: {', '.join(CASCADE_LISTS[:-1])} and {CASCADE_LISTS[-1]} need one entry per stage, got "
        f"{', '.join(map(str, lengths[:-1]))} and {lengths[-1]}"
    )


def _thresholds(section: str) -> Callable[[Mapping[str, Any]], str | None]:
    """Matching: a box below ``bg_iou_thresh`` is background, at or above ``fg_iou_thresh`` foreground;
    the matcher refuses a background bound above the foreground one."""

    def check(cfg: Mapping[str, Any]) -> str | None:
        fg, bg = dotted.get(cfg, f"{section}.fg_iou_thresh"), dotted.get(cfg, f"{section}.bg_iou_thresh")
        if fg is None or bg is None or bg <= fg:
            return None
        return f"{section}.bg_iou_thresh ({bg}) must be <= {section}.fg_iou_thresh ({fg})"

    return check


def _evaluates(period: Any) -> bool:
    """Whether ``train.eval_period`` turns evaluation on (null, '', 0 and false are off)."""
    if period in (None, "", False):
        return False
    try:
        return float(period) != 0
    except (TypeError, ValueError):
        return True  # 'epoch' (other words fail train.eval_period's own rule first)


def _save_best_needs_evaluation(cfg: Mapping[str, Any]) -> str | None:
    if not dotted.get(cfg, "train.save_best") or _evaluates(dotted.get(cfg, "train.eval_period")):
        return None
    return "train.save_best needs train.eval_period (iterations or 'epoch')"


# (the keys a rule reads, the rule); the first key names the rule's place in errors
CROSS_CHECKS: list[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], str | None]]] = [
    (tuple(f"{CASCADE}.{name}" for name in CASCADE_LISTS), _cascade_stages),
    (("model.rpn.bg_iou_thresh", "model.rpn.fg_iou_thresh"), _thresholds("model.rpn")),
    (("model.roi_heads.bg_iou_thresh", "model.roi_heads.fg_iou_thresh"), _thresholds("model.roi_heads")),
    (("train.save_best", "train.eval_period"), _save_best_needs_evaluation),
]


def cross_problems(cfg: Mapping[str, Any], touched: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(first key, problem)`` of every rule that fails on ``cfg`` (only rules reading a ``touched`` key
    when given); a rule whose keys are not all in ``cfg`` (a config of another schema) is skipped."""
    out = []
    for keys, rule in CROSS_CHECKS:
        if touched is not None and not any(dotted.within(k, touched) for k in keys):
            continue
        if not all(dotted.lookup(cfg, k)[0] for k in keys):
            continue
        problem = rule(cfg)
        if problem:
            out.append((keys[0], problem))
    return out
