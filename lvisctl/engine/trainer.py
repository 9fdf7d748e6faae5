"""The training loop for stage 1 (representation learning) and stage 2 (fine-tuning), paper section 2.

One loop for both stages; a stage differs only by its config. :class:`Trainer` owns the loop state (the
parts: model, optimizer, scaler, schedule, data; the context: config, run dir, process, phase; the iteration)
and calls its hooks (:mod:`lvisctl.engine.hooks`): lr schedule, non-finite checks, gradient clipping,
logging, evaluation, checkpointing are hooks, and they talk through the metrics store
(:mod:`lvisctl.engine.metrics`). Who builds the parts and picks the hooks is above the engine:
:func:`lvisctl.training.build_trainer` (the model, optimizer and data builders, the LVIS evaluation).

Exact resume. The run is a function of (seed, config, data): a checkpoint stores the model, optimizer,
AMP scaler, the iteration, the data position (epoch and batches consumed in it), every global RNG
state (per rank) and the hooks' state (:mod:`lvisctl.engine.state`). On resume the sampler restarts the same
epoch and skips the consumed batches, and the DataLoader's worker base seed comes from a generator seeded by
(seed, epoch) rather than from the global RNG (:mod:`lvisctl.engine.loader`). The data pipeline derives its
own randomness from (seed, epoch, position). So a run killed at any moment and resumed ends with
bit-identical weights.

Safety. A non-finite loss stops the run before the backward pass, with the iteration and the loss name,
so the weights in memory and on disk stay those of the last good step; nothing is saved after it. A run
that fails before its first checkpoint leaves nothing behind (no config, events or manifest entry).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvisctl.data.train_data import TrainData, build_train_data
from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import DistInfo, agree_flags, barrier, broadcast_buffers
from lvisctl.engine.hooks import Hook, NonFiniteLossError, hook_state_key
from lvisctl.engine.loader import epoch_loader
from lvisctl.engine.logging import TrainLogger, tensorboard_dir
from lvisctl.engine.metrics import MetricsStore
from lvisctl.engine.model_setup import build_optimizer, freeze_modules, set_frozen_eval
from lvisctl.engine.run_files import finish_phase_logs, save_phase_config
from lvisctl.engine.schedule import WarmupStepSchedule
from lvisctl.engine.state import LoopState, gather_rank_state
from lvisctl.rundir import Artifact, RunDir

__all__ = [
    "LoopState",
    "NonFiniteLossError",
    "TrainData",
    "TrainResult",
    "Trainer",
    "TrainerContext",
    "TrainerParts",
    "TrainingInterrupted",
    "build_optimizer",
    "build_train_data",
    "freeze_modules",
    "set_frozen_eval",
]


@contextlib.contextmanager
def deferred_sigint() -> Iterator[Callable[[], bool]]:
    """Ctrl-C stops training at the next step boundary, not inside a checkpoint save or while the manifest
    lock is held (an exception there could leave the lock taken and the exit path waiting on it); a second
    Ctrl-C stops at once. Yields a function telling whether Ctrl-C was pressed."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pending: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if pending:
            raise KeyboardInterrupt
        pending.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(pending)
    finally:
        signal.signal(signal.SIGINT, previous)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: where the run can be resumed from (``checkpoint`` None: nowhere)."""

    def __init__(self, iteration: int, checkpoint: str | None, run_dir: Path, is_main: bool = True) -> None:
        super().__init__(f"interrupted at iteration {iteration}")
        self.iteration, self.checkpoint, self.run_dir = iteration, checkpoint, run_dir
        self.is_main = is_main  # torchrun: only rank 0 reports


@dataclass
class TrainResult:
    checkpoint: Path
    iteration: int
    history: list[dict[str, float]]
    plot: Path | None = None
    skipped: bool = False  # the stage had already finished in this run dir
    model: nn.Module | None = None  # the trained model in memory (None when skipped)
    is_main: bool = True  # rank 0 (the process that wrote the files)


@dataclass
class TrainerParts:
    """What is trained and how: the model (unwrapped), its DDP wrapper (None: the model itself), the
    optimizer, the AMP scaler, the lr schedule, the data and the frozen module prefixes."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: WarmupStepSchedule
    data: TrainData
    ddp_model: nn.Module | None = None
    frozen: list[str] = field(default_factory=list)


@dataclass
class TrainerContext:
    """Where and as what it trains: the resolved config, the run dir, this process, the phase, the training
    inputs recorded with each checkpoint, AMP on/off, and whether the phase's config file exists already."""

    cfg: Any
    run: RunDir
    info: DistInfo
    phase: ckpt_io.Phase
    inputs: list[Artifact | str | Path] = field(default_factory=list)
    amp: bool = False
    config_saved: bool = False


class Trainer:
    """The loop and its state; everything periodic is a hook (see :mod:`lvisctl.engine.hooks`).

    What hooks use (:class:`~lvisctl.engine.hooks.TrainerView`): the parts (``model``, ``optimizer``,
    ``scaler``, ``schedule``, ``data``), the context (``cfg``, ``run``, ``info``, ``phase``, ``amp``),
    ``loop`` (iteration, epoch, history), ``max_iter``, ``metrics`` (the store the step's values are put in),
    ``logger``, and the methods ``save_checkpoint``, ``set_train_mode``, ``agree_step``, ``finish_logs``.
    """

    def __init__(
        self,
        parts: TrainerParts,
        context: TrainerContext,
        hooks: Sequence[Hook],
        loop: LoopState | None = None,
    ) -> None:
        self.parts, self.context = parts, context
        self.model, self.optimizer, self.scaler = parts.model, parts.optimizer, parts.scaler
        self.ddp_model = parts.ddp_model if parts.ddp_model is not None else parts.model
        self.schedule, self.data = parts.schedule, parts.data
        self.cfg, self.run, self.info, self.phase = context.cfg, context.run, context.info, context.phase
        self.amp = context.amp
        self.hooks, self.loop = list(hooks), loop if loop is not None else LoopState()
        self.max_iter = parts.schedule.max_iter
        self.metrics = MetricsStore(self.loop.iteration)
        self.logger: TrainLogger | None = None
        self._plot: Path | None = None
        self._config_saved = context.config_saved
        self._saved_any = False
        self._interrupted: Callable[[], bool] = lambda: False  # set while the loop runs
        self.stop_requested = False  # Ctrl-C on some rank, agreed by all (agree_step)
        self._agreed = False

    # -------------------------------------------------------------------------------------- running
    def call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self)

    def train(self) -> TrainResult:
        loop, info = self.loop, self.info
        start = loop.iteration
        self.logger = TrainLogger(
            total=self.max_iter,
            start=start,
            tensorboard_dir=tensorboard_dir(self.run.root, self.phase.name),
            stage=self.phase,
            enabled=info.is_main,
            metrics_path=self.run.root / "logs" / f"metrics_{self.phase.name}.jsonl",
        )
        last = ckpt_io.latest_checkpoint(self.run, self.phase) if info.is_main else None
        self.metrics.put("last_checkpoint", last)
        try:
            self.set_train_mode()
            self.call("before_train")
            if loop.rng is not None:
                ckpt_io.restore_rng_state(loop.rng)
            with deferred_sigint() as self._interrupted:
                self._loop()
            broadcast_buffers(self.model, info)
            self.call("after_train")
        except KeyboardInterrupt:
            self._failed(start)
            last = self.metrics.latest("last_checkpoint")
            where = last.path if (last is not None and self._kept(start)) else None
            raise TrainingInterrupted(loop.iteration, where, self.run.root, info.is_main) from None
        except BaseException:
            self._failed(start)
            raise
        finally:
            self.logger.close()
        barrier(info)
        # every rank knows where rank 0 put the final checkpoint
        ckpt = self.run.path_of(ckpt_io.checkpoint_relpath(self.phase, loop.iteration, final=True))
        return TrainResult(
            ckpt, loop.iteration, loop.history, self._plot, model=self.model, is_main=info.is_main
        )

    def _loop(self) -> None:
        loop, batch = self.loop, int(self.cfg.train.batch_size)
        while loop.iteration < self.max_iter:
            tick = time.perf_counter()
            for images, targets in epoch_loader(
                self.data, self.cfg, self.info, loop.epoch, loop.epoch_position * batch
            ):
                data_time = time.perf_counter() - tick
                self.metrics.put("data_time", data_time)
                # Ctrl-C during the last step: stop at this safe point. Under torchrun the ranks agree
                # first (run_step), so none stops alone and leaves the others blocked in a collective.
                if not self.info.distributed and self._interrupted():
                    raise KeyboardInterrupt
                self.call("before_step")
                self.run_step(images, targets)
                loop.iteration += 1
                loop.epoch_position += 1
                self.metrics.iteration = loop.iteration
                self.metrics.put("step_time", time.perf_counter() - tick - data_time)
                self.call("after_step")
                if loop.iteration >= self.max_iter:
                    break
                tick = time.perf_counter()
            else:  # the epoch ran out before max_iter: next epoch from its start
                loop.epoch += 1
                loop.epoch_position = 0
                self.call("after_epoch")

    def run_step(self, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> None:
        """Forward, ``before_backward`` hooks (non-finite check), backward, ``after_backward`` hooks
        (clipping), the optimizer step."""
        device = self.info.device
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [_to_device(t, device) for t in targets]
        with torch.autocast(device_type=device.type, enabled=self.amp):
            loss_dict = self.ddp_model(images, targets)
        losses = {k: v.float() for k, v in loss_dict.items()}
        self.metrics.put("losses", losses)
        total = sum(losses.values())
        self._agreed = False
        self.call("before_backward")
        if not self._agreed:  # no non-finite check among the hooks: agree on the stop alone
            self.agree_step(None)
        if self.stop_requested:  # every rank raises at this same step (nothing applied)
            raise KeyboardInterrupt
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.call("after_backward")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        step_losses = {"loss": total.detach(), **{k: v.detach() for k, v in losses.items()}}
        self.metrics.put("losses", {})  # the graph is not kept past its step
        self.metrics.put("step_losses", step_losses)

    def agree_step(self, local_bad: torch.Tensor | None) -> bool:
        """What all ranks decide together each step, in one collective and one host sync: is a loss
        non-finite on any rank (``local_bad``, a bool tensor; None = not checked) and was Ctrl-C pressed
        on any (sets ``stop_requested``). Returns whether a loss is bad somewhere."""
        self._agreed = True
        any_bad, self.stop_requested = agree_flags(local_bad, self._interrupted(), self.info)
        return any_bad

    def set_train_mode(self) -> None:
        """Training mode, with the normalisation layers of frozen modules kept in eval mode."""
        self.ddp_model.train()
        set_frozen_eval(self.model, self.parts.frozen)

    # -------------------------------------------------------------------------------------- saving
    def save_checkpoint(self, *, final: bool, best: Mapping[str, Any] | None = None) -> Artifact | None:
        """Save the full state (a collective: every rank joins the RNG gather, rank 0 writes).

        The resolved config is written and registered with the first checkpoint of a run, so a run that
        fails before it leaves no config behind. ``best`` = ``{"metric", "value"}``: ``<phase>_best.pt``.
        """
        rng, windows = gather_rank_state(self.info, self.loop)
        if not self.info.is_main:
            return None
        saved_cfg = self.data.saved_config(self.cfg)
        if not self._config_saved:
            save_phase_config(self.run, saved_cfg, self.phase, self.data.inputs)
            self._config_saved = True
        loop = self.loop
        state = {
            "stage": self.phase.stage,
            "phase": self.phase.name,
            "final": final,
            "iteration": loop.iteration,
            "epoch": loop.epoch,
            "epoch_position": loop.epoch_position,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng,
            "history": [dict(h) for h in loop.history],
            "log_window": windows[0],
            # every rank's loss sums since the last log line: a DDP resume logs what the run would have
            "log_windows": windows,
            "log_window_count": loop.window_count,
            "world_size": self.info.world_size,
            "config": saved_cfg.to_dict(),
            "category_stats": self.data.category_stats.to_dict(),
            "hooks": {hook_state_key(h): h.state_dict() for h in self.hooks if h.state_dict()},
        }
        saved = ckpt_io.save_checkpoint(self.run, state, inputs=self.context.inputs, best=best)
        self._saved_any = True
        return saved

    def finish_logs(self) -> None:
        """Loss curve (kind ``plot``), the logged history (kind ``log``) and metrics.jsonl, from rank 0."""
        if self.info.is_main:
            log_scale = str(self.cfg.log.loss_plot_scale) != "linear"
            last = self.metrics.latest("last_checkpoint")
            self._plot = finish_phase_logs(self.run, self.phase, self.loop.history, last, log_scale)

    # -------------------------------------------------------------------------------------- failure
    def _kept(self, start: int) -> bool:
        return start > 0 or self._saved_any

    def _failed(self, start: int) -> None:
        """A fresh run that stopped before its first checkpoint leaves nothing behind."""
        if self._kept(start):
            return
        if self.logger is not None:
            self.logger.discard()
        if self.info.is_main:
            for hook in self.hooks:
                hook.discard(self)


def _to_device(target: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in target.items()}
