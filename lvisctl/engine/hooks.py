"""The training loop's extension points (detectron2's ``HookBase`` / mmengine's ``Hook``, kept plain).

A hook sees the :class:`~lvisctl.engine.trainer.Trainer` and may act at these points, called in the
order of the trainer's hook list:

``before_train``  once, after the state is restored (``trainer.loop.iteration`` = where it starts);
``before_step``   before each step (the lr schedule sets the step's lr here);
``before_backward`` after the forward pass, with ``trainer.losses`` (the non-finite check stops here,
                  so a NaN step is never applied);
``after_step``    after the optimizer step (``trainer.loop.iteration`` counts it);
``after_epoch``   when the data of an epoch ran out (not after the last, partial epoch);
``after_train``   once, after the last step (not when the run failed);
``discard``       instead, when a run fails before its first checkpoint (remove what the hook wrote).

A hook with state that must survive a resume (the evaluation history, the best metric) returns it from
``state_dict`` (plain values only: checkpoints load weights-only) and gets it back in
``load_state_dict``. Hooks that draw random numbers must restore the global RNG states, so that a run
with and without them trains identically (evaluation and image logging do).

The default list (:func:`default_hooks`): LR schedule, non-finite check, logging, evaluation, image
logging, checkpointing. Evaluation runs before the checkpoint of the same iteration, so a checkpoint
holds the evaluations up to and including its own iteration and a resumed run evaluates exactly where
the uninterrupted one did.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import all_reduce_mean
from lvisctl.engine.schedule import set_lr
from lvisctl.errors import LvisctlError

if TYPE_CHECKING:
    from lvisctl.engine.trainer import Trainer


class NonFiniteLossError(LvisctlError):
    """A loss became NaN/inf; the run stopped without saving the step's weights."""


class Hook:
    """Base class: every method is a no-op."""

    def before_train(self, trainer: Trainer) -> None: ...

    def before_step(self, trainer: Trainer) -> None: ...

    def before_backward(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def after_epoch(self, trainer: Trainer) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...

    def discard(self, trainer: Trainer) -> None:
        """The run failed before its first checkpoint: remove what this hook wrote (nothing is kept)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


# ------------------------------------------------------------------------------------------ schedule
class LRScheduleHook(Hook):
    """Sets the lr of the coming step from the warm-up + step schedule (a function of the iteration)."""

    def before_step(self, trainer: Trainer) -> None:
        trainer.lr = trainer.schedule.lr_at(trainer.loop.iteration)
        set_lr(trainer.optimizer.param_groups, trainer.lr)


# ------------------------------------------------------------------------------------------ NaN checks
class NonFiniteCheckHook(Hook):
    """Stops before the backward pass when a loss is NaN/inf on any rank (the step is not applied)."""

    def before_backward(self, trainer: Trainer) -> None:
        losses, info = trainer.losses, trainer.info
        values = torch.stack([v.detach() for v in losses.values()]) if losses else torch.zeros(1)
        finite = torch.isfinite(values)
        # one collective and one host sync per step, shared with the Ctrl-C agreement
        if not trainer.agree_step(~finite.all()):
            return
        if not bool(finite.all()):  # the error path only: name the loss
            idx = int((~finite).nonzero()[0])
            name, value = list(losses)[idx], float(values[idx])
            what = f"{name} is {value}" + (f" on rank {info.rank}" if info.distributed else "")
        else:
            what = "a loss is not finite on another rank"
        last = trainer.last_good
        kept = f"last good checkpoint: {last.path}" if last else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"{trainer.run.root}: {trainer.phase} stopped at iteration {trainer.loop.iteration + 1}: {what}; "
            f"the step was not applied ({kept})"
        )


def check_finite_weights(trainer: Trainer) -> None:
    """A finite loss can still overflow a gradient (fp32 has no GradScaler): never save such weights.

    DDP keeps the weights identical on every rank, so all ranks stop together.
    """
    bad = [n for n, p in trainer.model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        last = ckpt_io.latest_checkpoint(trainer.run, trainer.phase)
        kept = f"last good checkpoint: {last.path}" if last else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"{trainer.run.root}: {trainer.phase} stopped at iteration {trainer.loop.iteration}: weights "
            f"{bad[0]} are not finite (a gradient overflowed); not saved ({kept})"
        )


# ------------------------------------------------------------------------------------------ logging
def _memory_mb(device: torch.device) -> float:
    """Peak GPU memory of this process (CUDA), else the peak resident set size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class LoggingHook(Hook):
    """Window-mean losses every ``train.log_period`` steps (rank-averaged) into the history (loss curve,
    checkpoints), the console, TensorBoard and ``metrics.jsonl``; plus lr, data and step time, it/s,
    peak memory and the gradient norm of the log step (TensorBoard and jsonl only: they are not
    reproducible, the history is)."""

    def __init__(self, period: int) -> None:
        self.period = max(int(period), 1)
        self._times: list[tuple[float, float]] = []  # (data wait, step) seconds since the last log
        self._t_log = time.perf_counter()

    def before_train(self, trainer: Trainer) -> None:
        self._t_log = time.perf_counter()  # it/s counts steps, not the set-up before them

    def after_step(self, trainer: Trainer) -> None:
        loop = trainer.loop
        loop.accumulate(trainer.step_losses)
        self._times.append((trainer.data_time, trainer.step_time))
        logged = extra = None
        if loop.iteration % self.period == 0 or loop.iteration == trainer.max_iter:
            logged = _log_values(loop.window_mean(), trainer.info)  # mean over the log period
            loop.history.append({"iteration": loop.iteration, "lr": trainer.lr, **logged})
            extra = self._extra(trainer)
        trainer.logger.step(loop.iteration, logged, trainer.lr, extra)

    def _extra(self, trainer: Trainer) -> dict[str, float]:
        now = time.perf_counter()
        n = max(len(self._times), 1)
        data = sum(t[0] for t in self._times) / n
        step = sum(t[1] for t in self._times) / n
        rate = len(self._times) / max(now - self._t_log, 1e-9)
        self._times, self._t_log = [], now
        out = {"data_time": data, "step_time": step, "iters_per_s": rate}
        out["max_mem_mb"] = _memory_mb(trainer.info.device)
        if trainer.grad_norm is not None:
            out["grad_norm"] = float(trainer.grad_norm)
        return out

    def after_train(self, trainer: Trainer) -> None:
        trainer.finish_logs()


def _log_values(losses: Mapping[str, torch.Tensor], info: Any) -> dict[str, float]:
    names = list(losses)
    mean = all_reduce_mean(torch.stack([losses[n] for n in names]), info).tolist()
    return dict(zip(names, (float(v) for v in mean), strict=True))


# ------------------------------------------------------------------------------------------ checkpoints
class CheckpointHook(Hook):
    """Every ``train.checkpoint_period`` steps and at the end: check the weights are finite, save (rank 0
    writes; every rank joins the RNG gather), keep the newest ``train.keep_checkpoints`` periodic ones."""

    def __init__(self, period: int, keep: int) -> None:
        self.period, self.keep = max(int(period), 1), int(keep)

    def after_step(self, trainer: Trainer) -> None:
        it = trainer.loop.iteration
        final = it == trainer.max_iter
        if not (final or it % self.period == 0):
            return
        check_finite_weights(trainer)
        saved = trainer.save_checkpoint(final=final)
        if saved is not None:
            trainer.last_good = saved
            if not final:
                ckpt_io.prune_checkpoints(trainer.run, trainer.phase, self.keep)


def default_hooks(cfg: Any, run: Any = None) -> list[Hook]:
    """The standard list, in calling order (see the module docstring). With ``run``, the validation
    data that evaluation or image logging needs is checked now, before any data or model is loaded."""
    from lvisctl.engine.eval_hook import EvalHook, ImageLogHook, require_val_source

    hooks: list[Hook] = [LRScheduleHook(), NonFiniteCheckHook(), LoggingHook(int(cfg.train.log_period))]
    eval_hook = EvalHook.from_config(cfg)
    if eval_hook is not None:
        hooks.append(eval_hook)
    image_hook = ImageLogHook.from_config(cfg)
    if image_hook is not None:
        hooks.append(image_hook)
    if run is not None and (eval_hook is not None or image_hook is not None):
        require_val_source(cfg, run)
    hooks.append(CheckpointHook(int(cfg.train.checkpoint_period), int(cfg.train.keep_checkpoints)))
    return hooks
