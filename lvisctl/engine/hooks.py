"""The training loop's extension points (detectron2's ``HookBase`` / mmengine's ``Hook``, kept plain).

A hook sees the trainer (:class:`TrainerView`: the parts, the run, the loop position and the metrics store
:class:`~lvisctl.engine.metrics.MetricsStore`) and may act at these points, called in the order of the
trainer's hook list:

``before_train``    once, after the state is restored (``trainer.loop.iteration`` = where it starts);
``before_step``     before each step (the lr schedule sets the step's lr here);
``before_backward`` after the forward pass, with the step's ``losses`` in the store (the non-finite check
                    stops here, so a NaN step is never applied);
``after_backward``  after ``backward``, before the optimizer step: the gradients are there (clipping,
                    gradient statistics, EQLv2-like gradient collectors);
``after_step``      after the optimizer step (``trainer.loop.iteration`` counts it);
``after_epoch``     when the data of an epoch ran out (not after the last, partial epoch);
``after_train``     once, after the last step (not when the run failed);
``discard``         instead, when a run fails before its first checkpoint (remove what the hook wrote).

Hooks talk to each other through the metrics store (``trainer.metrics.put`` / ``latest``), not through
attributes of the trainer. A hook with state that must survive a resume returns it from ``state_dict``
(plain values only: checkpoints load weights-only), saved under the hook's class name, and gets it back in
``load_state_dict``. Hooks that draw random numbers must restore the global RNG states, so that a run with
and without them trains identically (evaluation and image logging do).

A new hook is one new file: subclass :class:`Hook`, register it on :data:`lvisctl.registry.HOOKS` and add it
to the list given to ``lvisctl.training.train(..., hooks=...)`` (``lvisctl.training.default_hooks`` is the
standard list to extend).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import DistInfo, all_reduce_mean
from lvisctl.engine.logging import TrainLogger
from lvisctl.engine.metrics import MetricsStore
from lvisctl.engine.schedule import WarmupStepSchedule, set_lr
from lvisctl.errors import LvisctlError
from lvisctl.registry import HOOKS
from lvisctl.rundir import Artifact, RunDir


class NonFiniteLossError(LvisctlError):
    """A loss became NaN/inf; the run stopped without saving the step's weights."""


class LoopPosition(Protocol):
    """The loop's position and loss history (:class:`lvisctl.engine.state.LoopState`)."""

    iteration: int
    epoch: int
    history: list[dict[str, float]]

    def accumulate(self, losses: Mapping[str, torch.Tensor]) -> None: ...

    def window_mean(self) -> dict[str, torch.Tensor]: ...


class TrainerView(Protocol):
    """What a hook may use of the trainer (:class:`lvisctl.engine.trainer.Trainer`)."""

    model: nn.Module  # unwrapped (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: WarmupStepSchedule
    data: Any  # lvisctl.data.train_data.TrainData
    cfg: Any
    run: RunDir
    info: DistInfo
    phase: ckpt_io.Phase
    amp: bool
    max_iter: int
    loop: LoopPosition
    metrics: MetricsStore
    logger: TrainLogger | None

    def save_checkpoint(self, *, final: bool, best: Mapping[str, Any] | None = None) -> Artifact | None: ...

    def set_train_mode(self) -> None: ...

    def agree_step(self, local_bad: torch.Tensor | None) -> bool: ...

    def finish_logs(self) -> None: ...


class Hook:
    """Base class: every method is a no-op."""

    def before_train(self, trainer: TrainerView) -> None: ...

    def before_step(self, trainer: TrainerView) -> None: ...

    def before_backward(self, trainer: TrainerView) -> None: ...

    def after_backward(self, trainer: TrainerView) -> None: ...

    def after_step(self, trainer: TrainerView) -> None: ...

    def after_epoch(self, trainer: TrainerView) -> None: ...

    def after_train(self, trainer: TrainerView) -> None: ...

    def discard(self, trainer: TrainerView) -> None:
        """The run failed before its first checkpoint: remove what this hook wrote (nothing is kept)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def legacy_state(self, saved_hooks: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """This hook's state in a checkpoint that saved it under another hook's name (older versions)."""
        return None


# ------------------------------------------------------------------------------------------ schedule
@HOOKS.register("lr_schedule", help="sets each step's lr from the warm-up + step schedule")
class LRScheduleHook(Hook):
    """Sets the lr of the coming step from the warm-up + step schedule (a function of the iteration)."""

    def before_step(self, trainer: TrainerView) -> None:
        lr = trainer.schedule.lr_at(trainer.loop.iteration)
        set_lr(trainer.optimizer.param_groups, lr)
        trainer.metrics.put("lr", lr)


# ------------------------------------------------------------------------------------------ NaN checks
@HOOKS.register("non_finite", help="stops before the backward pass when a loss is NaN/inf on any rank")
class NonFiniteCheckHook(Hook):
    """Stops before the backward pass when a loss is NaN/inf on any rank (the step is not applied)."""

    def before_backward(self, trainer: TrainerView) -> None:
        losses, info = trainer.metrics.latest("losses", {}), trainer.info
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
        last = trainer.metrics.latest("last_checkpoint")
        kept = f"last good checkpoint: {last.path}" if last else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"{trainer.run.root}: {trainer.phase} stopped at iteration {trainer.loop.iteration + 1}: {what}; "
            f"the step was not applied ({kept})"
        )


def check_finite_weights(trainer: TrainerView) -> None:
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


# ------------------------------------------------------------------------------------------ gradients
@HOOKS.register("gradients", help="gradient clipping (solver.clip_grad_norm) and the logged gradient norm")
class GradientHook(Hook):
    """After backward: clip the gradient norm to ``clip`` (> 0; unscaled first under AMP), else measure it
    on the steps that log (``log_period``); the norm goes to the store as ``grad_norm``."""

    def __init__(self, clip: float, log_period: int) -> None:
        self.clip, self.log_period = float(clip), max(int(log_period), 1)

    def after_backward(self, trainer: TrainerView) -> None:
        params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
        norm = None
        if self.clip > 0:
            trainer.scaler.unscale_(trainer.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip)
        elif self._logs_next(trainer):
            norm = grad_norm(params, trainer.scaler)
        trainer.metrics.put("grad_norm", norm)

    def _logs_next(self, trainer: TrainerView) -> bool:
        it = trainer.loop.iteration + 1
        return it % self.log_period == 0 or it == trainer.max_iter


def grad_norm(params: Sequence[torch.Tensor], scaler: torch.amp.GradScaler) -> torch.Tensor | None:
    """The global L2 norm of the (unscaled) gradients."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return norm / scaler.get_scale() if scaler.is_enabled() else norm


# ------------------------------------------------------------------------------------------ logging
def _memory_mb(device: torch.device) -> float:
    """Peak GPU memory of this process (CUDA), else the peak resident set size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


@HOOKS.register("logging", help="loss history, console, TensorBoard and metrics.jsonl every train.log_period")
class LoggingHook(Hook):
    """Window-mean losses every ``train.log_period`` steps (rank-averaged) into the history (loss curve,
    checkpoints), the console, TensorBoard and ``metrics.jsonl``; plus lr, data and step time, it/s,
    peak memory and the gradient norm of the log step (TensorBoard and jsonl only: they are not
    reproducible, the history is)."""

    def __init__(self, period: int) -> None:
        self.period = max(int(period), 1)
        self._times: list[tuple[float, float]] = []  # (data wait, step) seconds since the last log
        self._t_log = time.perf_counter()

    def before_train(self, trainer: TrainerView) -> None:
        self._t_log = time.perf_counter()  # it/s counts steps, not the set-up before them

    def after_step(self, trainer: TrainerView) -> None:
        loop, store = trainer.loop, trainer.metrics
        loop.accumulate(store.latest("step_losses"))
        self._times.append((store.latest("data_time", 0.0), store.latest("step_time", 0.0)))
        logged = extra = None
        lr = store.latest("lr", 0.0)
        if loop.iteration % self.period == 0 or loop.iteration == trainer.max_iter:
            window = loop.window_mean()  # mean over the log period
            logged = _log_values(window, trainer.info)
            loop.history.append({"iteration": loop.iteration, "lr": lr, **logged})
            extra = self._extra(trainer)
        assert trainer.logger is not None
        trainer.logger.step(loop.iteration, logged, lr, extra)

    def _extra(self, trainer: TrainerView) -> dict[str, float]:
        now = time.perf_counter()
        n = max(len(self._times), 1)
        data = sum(t[0] for t in self._times) / n
        step = sum(t[1] for t in self._times) / n
        rate = len(self._times) / max(now - self._t_log, 1e-9)
        self._times, self._t_log = [], now
        out = {"data_time": data, "step_time": step, "iters_per_s": rate}
        out["max_mem_mb"] = _memory_mb(trainer.info.device)
        norm = trainer.metrics.latest("grad_norm")
        if norm is not None:
            out["grad_norm"] = float(norm)
        return out

    def after_train(self, trainer: TrainerView) -> None:
        trainer.finish_logs()


def _log_values(losses: Mapping[str, torch.Tensor], info: DistInfo) -> dict[str, float]:
    names = list(losses)
    mean = all_reduce_mean(torch.stack([losses[n] for n in names]), info).tolist()
    return dict(zip(names, (float(v) for v in mean), strict=True))


# ------------------------------------------------------------------------------------------ checkpoints
@HOOKS.register("checkpoint", help="saves every train.checkpoint_period steps and at the end")
class CheckpointHook(Hook):
    """Every ``train.checkpoint_period`` steps and at the end: check the weights are finite, save (rank 0
    writes; every rank joins the RNG gather), keep the newest ``train.keep_checkpoints`` periodic ones."""

    def __init__(self, period: int, keep: int) -> None:
        self.period, self.keep = max(int(period), 1), int(keep)

    def after_step(self, trainer: TrainerView) -> None:
        it = trainer.loop.iteration
        final = it == trainer.max_iter
        if not (final or it % self.period == 0):
            return
        check_finite_weights(trainer)
        saved = trainer.save_checkpoint(final=final)
        if saved is not None:
            trainer.metrics.put("last_checkpoint", saved)
            if not final:
                ckpt_io.prune_checkpoints(trainer.run, trainer.phase, self.keep)


def engine_hooks(cfg: Any) -> tuple[list[Hook], Hook]:
    """The engine's standard hooks from the config: (the hooks before evaluation, the checkpoint hook, which
    comes last so a checkpoint holds the evaluations of its own iteration)."""
    train = cfg.train
    head: list[Hook] = [
        LRScheduleHook(),
        NonFiniteCheckHook(),
        GradientHook(float(cfg.solver.clip_grad_norm), int(train.log_period)),
        LoggingHook(int(train.log_period)),
    ]
    return head, CheckpointHook(int(train.checkpoint_period), int(train.keep_checkpoints))


def hook_state_key(hook: Hook) -> str:
    """The name a hook's state is saved under in a checkpoint (``hooks``): its class name."""
    return type(hook).__name__


def load_hook_states(hooks: Sequence[Hook], saved_hooks: Mapping[str, Any]) -> None:
    for hook in hooks:
        state = saved_hooks.get(hook_state_key(hook))
        if state is None:
            state = hook.legacy_state(saved_hooks)
        if state is not None:
            hook.load_state_dict(state)
