"""Value checks of a resolved config, run by ``load_config`` before anything is loaded.

The schema (``configs/_base_/*.yaml``) fixes each key's type; ``lvisctl.config.choices`` the allowed names
of the choice keys; this table the allowed ranges of numbers and lists. Each rule is (test, what it must
be): a value that fails is one line naming the key, e.g. ``train.batch_size must be >= 1, got 0``.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

from lvisctl.config.choices import allowed_values, choice_keys


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
}


def lookup(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """``(found, value)`` of a dotted key in a nested mapping."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


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


def check_values(cfg: Mapping[str, Any], source_of: Callable[[str], str]) -> None:
    """Raise one ``LvisctlError`` listing the choice and range problems of the source that has the first."""
    from lvisctl.errors import LvisctlError, raise_problems

    problems: dict[str, list[str]] = {}
    for key in [*choice_keys(), *RULES]:
        found, value = lookup(cfg, key)
        problem = (choice_problem(key, value) or value_problem(key, value)) if found else None
        if problem:
            problems.setdefault(source_of(key), []).append(problem)
    for key in PLUGIN_ARGS:
        if problem := plugin_args_problem(cfg, key):
            problems.setdefault(source_of(key), []).append(problem)
    if not problems:
        return
    source, found_here = next(iter(problems.items()))
    if len(found_here) == 1:
        raise LvisctlError(f"{source}: {found_here[0]}")
    raise_problems(source, found_here)
