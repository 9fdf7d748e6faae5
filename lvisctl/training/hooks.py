"""The standard hook list of ``lvisctl train``: the engine's hooks with the LVIS evaluation injected."""

from __future__ import annotations

from typing import Any

from lvisctl.engine.eval_hook import BestCheckpointHook, EvalHook, parse_period
from lvisctl.engine.hooks import Hook, engine_hooks
from lvisctl.errors import LvisctlError
from lvisctl.registry import HOOKS
from lvisctl.training.image_log import ImageLogHook
from lvisctl.training.lvis_eval import METRICS, LvisEvaluator, require_val_source


def default_hooks(cfg: Any, run: Any = None) -> list[Hook]:
    """In calling order: LR schedule, non-finite check, gradients (clipping), logging, [evaluation on the LVIS
    val split, best checkpoint, its manifest record], [prediction images], checkpointing (last, so that a
    checkpoint holds the evaluations of its own iteration and a resumed run evaluates exactly where the
    uninterrupted one did). With ``run``, the validation data that evaluation or image logging needs is
    checked now, before any data or model is loaded."""
    head, checkpoint = engine_hooks(cfg)
    hooks: list[Hook] = list(head)
    period, per_epoch = parse_period(cfg.train.eval_period)
    save_best = str(cfg.train.save_best or "")
    if save_best and save_best not in METRICS:
        raise LvisctlError(
            f"config: train.save_best must be <segm|bbox>_<AP|APr|APc|APf|...>, got {save_best!r}"
        )
    evaluates = bool(period or per_epoch)
    if save_best and not evaluates:
        raise LvisctlError("config: train.save_best needs train.eval_period (iterations or 'epoch')")
    if evaluates:
        evaluator = LvisEvaluator(int(cfg.train.eval_images or 0))
        hooks.append(EvalHook(period, evaluator, per_epoch=per_epoch, summary=evaluator.summary))
        if save_best:
            hooks.append(BestCheckpointHook(save_best, "max"))
        hooks.append(evaluator)  # after the best checkpoint: its record holds the new best
    image_hook = ImageLogHook.from_config(cfg)
    if image_hook is not None:
        hooks.append(image_hook)
    if run is not None and (evaluates or image_hook is not None):
        require_val_source(cfg, run)
    hooks.extend(extra_hooks(cfg))
    hooks.append(checkpoint)
    return hooks


def extra_hooks(cfg: Any) -> list[Hook]:
    """``train.hooks``: hooks by their registered name (``@HOOKS.register``), built by ``from_config(cfg)``
    when they have one; an unknown name is one line with "did you mean", before anything loads."""
    out = []
    for name in cfg.train.get("hooks", None) or ():
        if name not in HOOKS:  # the registry's message, under the key the user wrote
            raise LvisctlError("config: train.hooks: " + HOOKS.unknown_message(name).split(": ", 1)[1])
        hook_class = HOOKS.get(name)
        from_config = getattr(hook_class, "from_config", None)
        out.append(from_config(cfg) if from_config is not None else hook_class())
    return out
