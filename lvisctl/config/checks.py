"""Value checks of a resolved config, run by ``load_config`` before anything is loaded.

The schema (``configs/_base_/*.yaml``) fixes each key's type; ``lvisctl.config.choices`` the allowed names
of the choice keys; this table the allowed ranges of numbers and the shapes of lists (BAGS bin edges, one
anchor size per FPN level, 4 box-coder weights, ...). Each rule is (test, what it must be): a value that
fails is one line naming the key, e.g. ``train.batch_size must be >= 1, got 0``. Rules between keys are in
``cross_checks``; they run once every key passed its own rule.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lvisctl.config import dotted
from lvisctl.config.choices import allowed_values, choice_keys
from lvisctl.config.dotted import lookup

__all__ = ["RULES", "check_values", "choice_problem", "lookup", "rule_problems", "value_problem"]


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _num(v) and v >= low), f">= {low:g}"


def _positive() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _num(v) and v > 0), "> 0"


def _fraction() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _num(v) and 0 <= v <= 1), "in [0, 1]"


def _open_fraction() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _num(v) and 0 < v <= 1), "in (0, 1]"


def _sizes() -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: bool(v) and all(_num(x) and x > 0 and float(x).is_integer() for x in v)  # noqa: E731
    return ok, "a non-empty list of positive pixel sizes"


def _range() -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: len(v) == 2 and all(_num(x) and x > 0 for x in v) and v[0] <= v[1]  # noqa: E731
    return ok, "[low, high] with 0 < low <= high"


def _stages() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: all(s in (3, 4, 5) for s in v) and len(set(v)) == len(v)), "a subset of [3, 4, 5]"


def _increasing() -> tuple[Callable[[Any], bool], str]:
    # a decreasing schedule would decay at the later step first and never at the earlier one
    ok = lambda v: all(_num(x) and x > 0 for x in v) and all(a < b for a, b in itertools.pairwise(v))  # noqa: E731
    return ok, "a list of positive numbers in increasing order"


def _valid_ranges() -> tuple[Callable[[Any], bool], str]:
    def pair_ok(p: Any) -> bool:
        if not isinstance(p, list) or len(p) != 2:
            return False
        lo, hi = p
        if hi == math.inf or (isinstance(hi, str) and hi.strip().lower().lstrip("+.") in ("inf", "infinity")):
            hi = None  # inf, .inf or "inf": no upper limit, as null
        lo_ok = lo is None or (_num(lo) and lo >= 0)
        hi_ok = hi is None or (_num(hi) and hi > 0)
        return lo_ok and hi_ok and (lo is None or hi is None or lo < hi)

    return (lambda v: v == AUTO or (isinstance(v, list) and all(pair_ok(p) for p in v))), (
        "a list of [lo, hi] pairs of numbers (null = no limit; hi may be inf) with 0 <= lo < hi, or auto "
        "(derived from the test scales)"
    )


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bin_edges() -> tuple[Callable[[Any], bool], str]:
    # BAGS groups classes by training instance count: [0, e1), [e1, e2), ..., [ek, inf)
    def ok(v: Any) -> bool:
        positive = all(_int(x) and x > 0 for x in v)
        return bool(v) and positive and all(a < b for a, b in itertools.pairwise(v))

    return ok, "a non-empty list of strictly increasing positive integer instance counts"


def _per_level(count: int) -> tuple[Callable[[Any], bool], str]:
    # the FPN has P2..P6: the anchor generator needs exactly one size per level
    ok = lambda v: len(v) == count and all(_num(x) and x > 0 for x in v)  # noqa: E731
    return ok, f"{count} positive sizes, one per FPN level P2..P6"


def _box_weights() -> tuple[Callable[[Any], bool], str]:
    # the box coder's (wx, wy, ww, wh)
    ok = lambda w: isinstance(w, (list, tuple)) and len(w) == 4 and all(_num(x) and x > 0 for x in w)  # noqa: E731
    return ok, "4 positive numbers (wx, wy, ww, wh)"


def _stage_box_weights() -> tuple[Callable[[Any], bool], str]:
    one = _box_weights()[0]
    return (lambda v: all(one(w) for w in v)), "one list of 4 positive numbers (wx, wy, ww, wh) per stage"


def _each(test: Callable[[Any], bool], wanted: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: bool(v) and all(test(x) for x in v)), f"a non-empty list of numbers {wanted}"


def _channels(count: int) -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: len(v) == count and all(_num(x) for x in v)  # noqa: E731
    return ok, f"{count} numbers (one per colour channel)"


def _positive_channels(count: int) -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: len(v) == count and all(_num(x) and x > 0 for x in v)  # noqa: E731
    return ok, f"{count} positive numbers (one per colour channel)"


# The metrics an evaluation during training reports (lvisctl.evaluation's LVIS keys per IoU type).
IOU_TYPES = ("segm", "bbox")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
BEST_METRICS = tuple(f"{t}_{k}" for t in IOU_TYPES for k in AP_KEYS)


def _save_best() -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: v == "" or v in BEST_METRICS  # noqa: E731
    return ok, f"'' (off) or <{'|'.join(IOU_TYPES)}>_<{'|'.join(AP_KEYS)}>"


def eval_period_ok(value: Any) -> bool:
    """``train.eval_period``: null / '' / 0 / false (off), ``epoch`` (any case), or a whole number >= 0 of
    iterations (as ``lvisctl.engine.eval_hook.parse_period`` reads it)."""
    if value in (None, "", 0, False) or str(value).strip().lower() == "epoch":
        return True
    try:
        period = int(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return period >= 0 and not (isinstance(value, float) and not float(value).is_integer())


AUTO = "auto"
# keys whose value may differ from their default's type, so the schema's type check leaves them to their
# rule in RULES: ``valid_ranges`` takes the word ``auto`` (ranges derived from the test scales, which only
# lvisctl.inference.tta_settings knows) and ``inf`` / "Infinity" strings as upper limits
RULE_TYPED = frozenset({"inference.tta.valid_ranges"})


def typed_by_rule(key: str, value: Any) -> bool:
    """Whether ``value`` of ``key`` passes its rule in RULES, which then stands for its default's type (a
    value that fails gets the schema's line, which names the wrong element)."""
    return key in RULE_TYPED and value_problem(key, value) is None


SEED_MAX = 2**32 - 1  # numpy's seed range; the trainer derives per-epoch seeds from it

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "runtime.dist_timeout_min": _positive(),
    "seed": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= SEED_MAX,
        f"0..{SEED_MAX}",
    ),
    "solver.steps": _increasing(),
    "solver.step_iters": _increasing(),
    "model.roi_heads.eql_lambda": _at_least(0),
    "inference.tta.valid_ranges": _valid_ranges(),
    "solver.base_lr": _positive(),
    "solver.ref_batch": _at_least(1),
    "solver.momentum": (lambda v: _num(v) and 0 <= v < 1, "in [0, 1)"),
    "solver.weight_decay": _at_least(0),
    "solver.epochs": _at_least(1),
    "solver.gamma": _positive(),
    "solver.max_iter": (lambda v: _num(v) and v >= 0, ">= 0 (0 = the epoch schedule)"),
    "solver.warmup_iters": _at_least(0),
    "solver.warmup_factor": _open_fraction(),
    "solver.clip_grad_norm": _at_least(0),
    "train.batch_size": _at_least(1),
    "train.num_workers": _at_least(0),
    "train.checkpoint_period": _at_least(1),
    "train.keep_checkpoints": _at_least(1),
    "train.log_period": _at_least(1),
    "augment.train_scales": _sizes(),
    "augment.multi_scale_range": _range(),
    "augment.max_size": _positive(),
    "augment.hflip_prob": _fraction(),
    "augment.mosaic.prob": _fraction(),
    "augment.mosaic.size": _positive(),
    "augment.rotate.prob": _fraction(),
    "augment.rotate.max_angle": _at_least(0),
    "augment.instaboost.prob": _fraction(),
    "augment.instaboost.shift": _positive(),
    "augment.instaboost.max_angle": _at_least(0),
    "augment.instaboost.color_prob": _fraction(),
    "sampler.rfs_threshold": _positive(),
    # data.extra_per_epoch / extra_loss_weight: checked by lvisctl.data.self_training, which owns them
    "model.backbone.freeze_at": (lambda v: v in range(6), "0..5"),
    "model.backbone.dcn_stages": _stages(),
    "model.rpn.ignore_iof_thresh": _open_fraction(),
    "model.roi_heads.sampling_ratio": _at_least(0),
    "model.roi_heads.cascade.sampling_ratio": _at_least(0),
    "model.roi_heads.smooth_l1_beta": _at_least(0),
    "model.roi_heads.cascade.smooth_l1_beta": _at_least(0),
    "inference.scales": _sizes(),
    "inference.max_size": _positive(),
    "inference.batch_size": _at_least(1),
    "inference.num_workers": _at_least(0),
    "inference.detections_per_image": _at_least(1),
    "inference.score_thresh": _fraction(),
    "inference.nms_thresh": _open_fraction(),
    "inference.mask_thresh": _fraction(),
    "inference.merge_iou": _open_fraction(),
    "inference.chunk_size": _at_least(1),
    "inference.tta.scales": _sizes(),
    "inference.tta.max_size": _positive(),
    "train.save_best": _save_best(),
    "train.eval_period": (eval_period_ok, "a number of iterations or 'epoch' (null or 0 = off)"),
    "model.pixel_mean": _channels(3),
    "model.pixel_std": _positive_channels(3),
    "model.size_divisible": _at_least(1),
    "model.fpn.out_channels": _at_least(1),
    "model.rpn.anchor_sizes": _per_level(5),
    "model.rpn.aspect_ratios": _each(lambda x: _num(x) and x > 0, "> 0"),
    "model.rpn.nms_thresh": _open_fraction(),
    "model.rpn.fg_iou_thresh": _fraction(),
    "model.rpn.bg_iou_thresh": _fraction(),
    "model.rpn.batch_size_per_image": _at_least(1),
    "model.rpn.positive_fraction": _open_fraction(),
    "model.roi_heads.bags_bin_edges": _bin_edges(),
    "model.roi_heads.bags_others_ratio": _at_least(0),
    "model.roi_heads.pooler_resolution": _at_least(1),
    "model.roi_heads.fc_dim": _at_least(1),
    "model.roi_heads.box_convs": _at_least(0),
    "model.roi_heads.fg_iou_thresh": _fraction(),
    "model.roi_heads.bg_iou_thresh": _fraction(),
    "model.roi_heads.batch_size_per_image": _at_least(1),
    "model.roi_heads.positive_fraction": _open_fraction(),
    "model.roi_heads.bbox_reg_weights": _box_weights(),
    "model.roi_heads.ignore_iou": _open_fraction(),
    "model.roi_heads.cascade.iou_thresholds": _each(lambda x: _num(x) and 0 < x < 1, "in (0, 1)"),
    "model.roi_heads.cascade.stage_loss_weights": _each(lambda x: _num(x) and x >= 0, ">= 0"),
    "model.roi_heads.cascade.bbox_reg_weights": _stage_box_weights(),
    "model.mask_head.num_convs": _at_least(0),
    "model.mask_head.conv_dim": _at_least(1),
    "model.mask_head.pooler_resolution": _at_least(1),
    "model.mask_head.balanced_lambda": _at_least(0),
    "model.mask_head.balanced_eps": _at_least(0),
    "model.mask_head.boundary_loss_weight": _at_least(0),
    "model.mask_head.mask_iou_loss_weight": _at_least(0),
}


def choice_problem(key: str, value: Any) -> str | None:
    """The one-line problem of a choice key's value, or None when it is allowed (or not a choice key)."""
    allowed = allowed_values(key)
    if allowed is None or value in allowed:
        return None
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{key}: unknown value {value!r} ({hint}choose from {', '.join(allowed)})"


def value_problem(key: str, value: Any) -> str | None:
    """The one-line problem of a ranged key's value, or None."""
    rule = RULES.get(key)
    if rule is None or value is None:
        return None
    test, wanted = rule
    try:
        ok = bool(test(value))
    except TypeError:
        ok = False
    return None if ok else f"{key} must be {wanted}, got {value!r}"


# free mapping of a plug-in's keyword arguments -> the choice key that picks the plug-in; the plug-in's
# ``check_args(args, name)`` (if it has one) says what is wrong with them, e.g. a name its constructor lacks
PLUGIN_ARGS: dict[str, str] = {"model.roi_heads.cls_loss_args": "model.roi_heads.cls_loss"}


def plugin_args_problem(cfg: Mapping[str, Any], args_key: str) -> str | None:
    """The one-line problem of the plug-in arguments ``args_key``, or None (also for an unknown plug-in,
    which its choice key reports)."""
    from lvisctl.registry import registry_for

    found, args = lookup(cfg, args_key)
    picked, name = lookup(cfg, PLUGIN_ARGS[args_key])
    registry = registry_for(PLUGIN_ARGS[args_key])
    if not found or not args or not picked or registry is None or name not in registry:
        return None
    check = getattr(registry.get(name), "check_args", None)
    problem = check(dict(args), name) if check is not None else None
    return f"{args_key}: {problem}" if problem else None


def rule_problems(cfg: Mapping[str, Any], touched: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(key, problem)`` for every choice key and ranged key of ``cfg`` whose value is not allowed (only
    those inside the ``touched`` keys or sections when given)."""
    out = []
    for key in dict.fromkeys([*choice_keys(), *RULES]):
        if touched is not None and not dotted.within(key, touched):
            continue
        found, value = lookup(cfg, key)
        problem = (choice_problem(key, value) or value_problem(key, value)) if found else None
        if problem:
            out.append((key, problem))
    for key in PLUGIN_ARGS:
        if touched is not None and not dotted.within(key, touched):
            continue
        if problem := plugin_args_problem(cfg, key):
            out.append((key, problem))
    return out


def check_values(cfg: Mapping[str, Any], source_of: Callable[[str], str]) -> None:
    """Raise one ``LvisctlError`` listing the choice, range and cross-key problems of the source that has
    the first (cross-key rules only judge values that passed their own rules)."""
    from lvisctl.config.cross_checks import cross_problems

    by_source: dict[str, list[str]] = {}
    for key, problem in rule_problems(cfg) or cross_problems(cfg):
        by_source.setdefault(source_of(key), []).append(problem)
    raise_first(by_source)


def raise_first(by_source: Mapping[str, Sequence[str]]) -> None:
    """One ``LvisctlError`` for the problems of the first source: one line, or the first few and a count."""
    from lvisctl.errors import LvisctlError, raise_problems

    if not by_source:
        return
    source, found_here = next(iter(by_source.items()))
    if len(found_here) == 1:
        raise LvisctlError(f"{source}: {found_here[0]}")
    raise_problems(source, list(found_here))
