"""Periodic evaluation and the best checkpoint, for any evaluation (hooks of :mod:`lvisctl.engine.hooks`).

:class:`EvalHook` calls an injected ``evaluate_fn(model) -> {metric: value}`` every ``period`` iterations
(or after every epoch) and after the last iteration, on every rank (the function may split its work over the
ranks; rank 0's result is broadcast to all). It knows nothing of what is evaluated: the LVIS evaluation used
by ``lvisctl train`` is :class:`lvisctl.training.lvis_eval.LvisEvaluator`, injected by
:func:`lvisctl.training.default_hooks`. Results go to the metrics store (``val``, kept), TensorBoard,
``metrics.jsonl`` and one console line.

:class:`BestCheckpointHook` watches one metric of the store's ``val`` results and saves
``checkpoints/<phase>_best.pt`` (registered with ``best: true``) when it improves.

The model is evaluated in eval mode with the global RNG states put back afterwards, so a run with evaluation
trains exactly as one without it; the history and the best value live in the checkpoints (a resumed run
evaluates at the same iterations and keeps the best of the whole run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import broadcast_buffers, broadcast_object
from lvisctl.engine.hooks import Hook, TrainerView
from lvisctl.errors import LvisctlError
from lvisctl.registry import HOOKS

EvaluateFn = Callable[[nn.Module], Mapping[str, float]]
Summary = Callable[[Mapping[str, float]], str]


def parse_period(value: Any) -> tuple[int, bool]:
    """``train.eval_period`` -> (iterations, per_epoch); (0, False) = off."""
    if value in (None, "", 0, False):
        return 0, False
    if str(value).strip().lower() == "epoch":
        return 0, True
    try:
        period = int(value)
    except (TypeError, ValueError):
        period = -1
    if period < 0 or isinstance(value, float) and not float(value).is_integer():
        raise LvisctlError(
            f"config: train.eval_period must be a number of iterations or 'epoch', got {value!r}"
        )
    return period, False


@contextlib.contextmanager
def evaluating(trainer: TrainerView) -> Iterator[None]:
    """Model in eval mode and the global RNG states put back afterwards (evaluation changes no training)."""
    rng = ckpt_io.capture_rng_state()
    trainer.model.eval()
    try:
        yield
    finally:
        trainer.set_train_mode()
        ckpt_io.restore_rng_state(rng)


def plain_summary(metrics: Mapping[str, float]) -> str:
    return ": " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


@HOOKS.register("eval", help="evaluates the model with an injected evaluate_fn every N iterations / epoch")
class EvalHook(Hook):
    """``evaluate_fn(model)`` every ``period`` iterations (0 = only at the end), after each epoch with
    ``per_epoch``, and after the last iteration. ``summary(metrics)`` words the console line's tail."""

    def __init__(
        self,
        period: int,
        evaluate_fn: EvaluateFn,
        *,
        per_epoch: bool = False,
        summary: Summary | None = None,
        prefix: str = "val",
    ) -> None:
        self.period, self.per_epoch, self.evaluate_fn = int(period), per_epoch, evaluate_fn
        self.summary, self.prefix = summary or plain_summary, prefix
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------ hook points
    def before_train(self, trainer: TrainerView) -> None:
        for h in self.history:  # a resumed run: the store holds the evaluations of the whole run
            trainer.metrics.put(self.prefix, h["metrics"], iteration=h["iteration"], keep=True)

    def after_step(self, trainer: TrainerView) -> None:
        it = trainer.loop.iteration
        if it == trainer.max_iter or (self.period and it % self.period == 0):
            self.evaluate(trainer)

    def after_epoch(self, trainer: TrainerView) -> None:
        if self.per_epoch:
            self.evaluate(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, trainer: TrainerView) -> dict[str, float]:
        it = trainer.loop.iteration
        if self.history and self.history[-1]["iteration"] == it:
            return self.history[-1]["metrics"]  # after_epoch on the step that already evaluated
        # BatchNorm statistics drift apart per rank between DDP forwards: evaluate rank 0's everywhere
        broadcast_buffers(trainer.model, trainer.info)
        with evaluating(trainer):
            result = self.run_evaluation(trainer)
        metrics = broadcast_object(dict(result) if trainer.info.is_main else None, trainer.info)
        assert isinstance(metrics, dict)
        self.history.append({"iteration": it, "metrics": metrics})
        trainer.metrics.put(self.prefix, metrics, iteration=it, keep=True)
        if trainer.info.is_main and trainer.logger is not None:
            trainer.logger.scalars(it, metrics, prefix=self.prefix)
            trainer.logger.message(f"{trainer.phase} eval at iteration {it}{self.summary(metrics)}")
        return metrics

    def run_evaluation(self, trainer: TrainerView) -> Mapping[str, float]:
        """One evaluation of ``trainer.model`` (every rank; rank 0's result counts)."""
        return self.evaluate_fn(trainer.model)


class OncePerEvaluationHook(Hook):
    """A hook that acts once after each evaluation (``after_evaluation``), at the end of the step or epoch
    that ran it: when the metrics store's ``source`` results are of this iteration and it has not acted on
    them yet (an evaluation after the last step of an epoch is seen at both ends)."""

    source = "val"
    _handled: int | None = None  # the iteration of the last evaluation acted on

    def after_step(self, trainer: TrainerView) -> None:
        self.check(trainer)

    def after_epoch(self, trainer: TrainerView) -> None:
        self.check(trainer)

    def check(self, trainer: TrainerView) -> None:
        """``after_evaluation`` if this iteration's evaluation has not been acted on yet."""
        it = trainer.loop.iteration
        if trainer.metrics.iteration_of(self.source) != it or self._handled == it:
            return
        self._handled = it
        self.after_evaluation(trainer)

    def after_evaluation(self, trainer: TrainerView) -> None: ...


@HOOKS.register("best_checkpoint", help="saves <phase>_best.pt when a metric of the evaluations improves")
class BestCheckpointHook(OncePerEvaluationHook):
    """After each evaluation (the store's ``source`` results): when ``metric`` is better than every earlier
    value (``mode`` max or min), save ``<phase>_best.pt``. Put it after the evaluation hook and before the
    checkpoint hook, so the periodic checkpoint of the same iteration holds the new best."""

    def __init__(self, metric: str, mode: str = "max", source: str = "val") -> None:
        if mode not in ("max", "min"):
            raise LvisctlError(f"best checkpoint: mode must be max or min, got {mode!r}")
        self.metric, self.mode, self.source = metric, mode, source
        self.best: dict[str, Any] | None = None

    def before_train(self, trainer: TrainerView) -> None:
        if self.best:
            trainer.metrics.put("best", dict(self.best), iteration=int(self.best["iteration"]))

    def after_evaluation(self, trainer: TrainerView) -> None:
        """Save the best checkpoint if this iteration's evaluation improved ``metric``."""
        it = trainer.loop.iteration
        value = trainer.metrics.latest(self.source, {}).get(self.metric)
        if value is None or not self._better(float(value)):
            return
        self.best = {"metric": self.metric, "value": float(value), "iteration": it}
        trainer.metrics.put("best", dict(self.best))
        saved = trainer.save_checkpoint(final=False, best=self.best)
        if saved is not None and trainer.logger is not None:
            trainer.logger.message(f"new best {self.metric} {value:.4f} at iteration {it}: {saved.path}")

    def _better(self, value: float) -> bool:
        if not self.best:
            return True
        old = float(self.best["value"])
        return value > old if self.mode == "max" else value < old

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)} if self.best else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state["best"]) if state.get("best") else None

    def legacy_state(self, saved_hooks: Mapping[str, Any]) -> Mapping[str, Any] | None:
        # before the split, the evaluation hook kept the best value (hooks.EvalHook.best)
        old = (saved_hooks.get("EvalHook") or {}).get("best")
        return {"best": old} if old else None
