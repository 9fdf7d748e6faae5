"""The training loop for stage 1 (representation learning) and stage 2 (fine-tuning), paper section 2.

One loop for both stages; a stage differs only by its config: ``train.init_from`` (stage 2 defaults to
the stage-1 final checkpoint from the manifest) and ``train.freeze`` (module prefixes, applied in
:func:`freeze_modules`, the one place freezing happens). What a run starts from and what loaded is
decided in :mod:`lvisctl.engine.init_weights` (frozen parts take the checkpoint's architecture).

:class:`Trainer` owns the loop state (model, optimizer, scaler, schedule, data, run dir, iteration) and
calls its hooks (:mod:`lvisctl.engine.hooks`): lr schedule, non-finite checks, logging, evaluation,
checkpointing are hooks. Data set-up lives in :mod:`lvisctl.data.train_data`, model set-up in
:mod:`lvisctl.modeling`.

Exact resume. The run is a function of (seed, config, data): a checkpoint stores the model, optimizer,
AMP scaler, the iteration, the data position (epoch and batches consumed in it), every global RNG
state (per rank) and the hooks' state. On resume the sampler restarts the same epoch and skips the
consumed batches, and the DataLoader's worker base seed comes from a generator seeded by (seed, epoch)
rather than from the global RNG (the DataLoader draws it when an iterator is created, which would
otherwise differ between a resumed and an uninterrupted run). The data pipeline derives its own
randomness from (seed, epoch, position). So a run killed at any moment and resumed ends with
bit-identical weights. A resume refuses training inputs whose sha256 changed since the checkpoint
(unless ``allow_changed_inputs``), and falls back to the older checkpoint when the newest is damaged.

Safety. A non-finite loss stops the run before the backward pass, with the iteration and the loss name,
so the weights in memory and on disk stay those of the last good step; nothing is saved after it. A run
that fails before its first checkpoint leaves nothing behind (no config, events or manifest entry).
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler

from lvisctl.config import Config
from lvisctl.data.categories import CategoryStats
from lvisctl.data.dataset import init_train_worker
from lvisctl.data.train_data import TrainData, build_train_data, resolve_train_annotations
from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import (
    DistInfo,
    agree_flags,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
    pick_device,
    set_cudnn_benchmark,
    set_deterministic,
    timeout_of,
)
from lvisctl.engine.hooks import Hook, NonFiniteLossError, default_hooks
from lvisctl.engine.init_weights import (
    StartingPoint,
    init_source,
    load_starting_weights,
    model_build_config,
    prepare_config,
)
from lvisctl.engine.logging import TrainLogger, plot_loss_curves, print_line, tensorboard_dir
from lvisctl.engine.resume import (
    check_inputs_unchanged,
    check_resume_config,
    clear_phase,
    find_resume_state,
    saved_process_config,
)
from lvisctl.engine.schedule import WarmupStepSchedule, build_schedule
from lvisctl.errors import LvisctlError
from lvisctl.modeling.roi_keys import upgrade_key, upgrade_prefixes
from lvisctl.rundir import Artifact, RunDir, atomic_write_json, atomic_write_text

__all__ = [
    "LoopState",
    "NonFiniteLossError",
    "TrainData",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "build_optimizer",
    "build_train_data",
    "freeze_modules",
    "resolve_train_annotations",
    "set_frozen_eval",
    "train",
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


ModelBuilder = Callable[[Config, CategoryStats], nn.Module]
DataBuilder = Callable[[Config, RunDir, DistInfo], TrainData]


# ------------------------------------------------------------------------------------------ entry point
def train(
    cfg: Config | None,
    run_dir: str | Path,
    *,
    stage: int = 1,
    phase: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed_inputs: bool = False,
    build_model: ModelBuilder | None = None,
    build_data: DataBuilder | None = None,
    hooks: Sequence[Hook] | None = None,
) -> TrainResult:
    """Train one stage in ``run_dir``; with ``resume`` continue from its newest checkpoint of ``stage``.

    ``cfg`` may be None only with ``resume`` (the checkpoint's config is used). ``overwrite`` replaces
    this phase's earlier checkpoints (and its config, logs, plot) instead of refusing them.
    ``build_model`` / ``build_data`` default to the model and data layers and ``hooks`` to
    :func:`~lvisctl.engine.hooks.default_hooks`; tests pass small stand-ins.
    """
    if cfg is None and not resume:
        raise LvisctlError("train: a config is required unless resuming (--resume)")
    if overwrite and resume:
        raise LvisctlError("train: --overwrite starts the phase again; it cannot be combined with --resume")
    phase_ = ckpt_io.Phase(stage, phase or "")
    # the process group's backend follows the device: a resume without --config takes the saved one's
    process_cfg = cfg if cfg is not None else saved_process_config(RunDir(run_dir), phase_)
    info = init_distributed(process_cfg.get("device", "auto"), timeout_of(process_cfg))
    try:
        opts = _Options(resume, overwrite, allow_changed_inputs, build_model, build_data, hooks)
        run = RunDir(run_dir)
        with run.phase_lock(phase_.name):  # one writer per phase for the command's whole life
            return _train(cfg, run, info, phase_, opts)
    except RuntimeError as err:
        if "does not have a deterministic implementation" not in str(err):
            raise
        op = str(err).split(" does not have")[0].strip()
        raise LvisctlError(
            f"config: train.deterministic is true but {op} has no deterministic implementation on "
            f"{info.device.type} (see docs/gpu.md); set train.deterministic=false"
        ) from None
    finally:
        cleanup_distributed()


@dataclass
class _Options:
    resume: bool
    overwrite: bool
    allow_changed_inputs: bool
    build_model: ModelBuilder | None
    build_data: DataBuilder | None
    hooks: Sequence[Hook] | None


def _train(
    cfg: Config | None, run: RunDir, info: DistInfo, phase: ckpt_io.Phase, opts: _Options
) -> TrainResult:
    found = find_resume_state(run, phase, opts.resume, info, overwrite=opts.overwrite)
    state, state_art = found if found is not None else (None, None)
    notes: list[str] = []
    init: StartingPoint | None = None
    if state is not None:
        if cfg is not None:  # the same resolution as the fresh run, so an unchanged config compares equal
            cfg, notes, _ = prepare_config(cfg, run, phase)
        cfg = check_resume_config(cfg, state, run)
        if state.get("final"):  # nothing left to do (e.g. a re-run demo)
            final = ckpt_io.latest_checkpoint(run, phase, final=True)
            history = list(state.get("history", []))
            ckpt = run.path_of(final.path)
            return TrainResult(ckpt, int(state["iteration"]), history, skipped=True, is_main=info.is_main)
        info = replace(info, device=pick_device(cfg.device, info.local_rank))  # the saved config's device
    else:
        assert cfg is not None
        cfg, notes, init = prepare_config(cfg, run, phase)
    assert cfg is not None
    set_cudnn_benchmark(cfg, info.device, training=True)
    set_deterministic(bool(cfg.train.deterministic), info.device)
    _seed_everything(int(cfg.seed))
    hooks = list(opts.hooks) if opts.hooks is not None else default_hooks(cfg, run)

    data = (opts.build_data or build_train_data)(cfg, run, info)
    source = init.source if init is not None else init_source(cfg, run, phase)
    inputs = [*data.inputs, *([source] if source is not None else [])]
    if state_art is not None and not opts.allow_changed_inputs:
        check_inputs_unchanged(run, state_art, inputs)
    model = (opts.build_model or _default_model_builder)(
        model_build_config(cfg, state is not None or init is not None), data.category_stats
    )
    if init is not None:  # a resume loads its own weights below
        notes += load_starting_weights(model, init, cfg, data.category_stats)
    elif state is None:  # a fresh start from ImageNet weights: say what the trunk file did not fill
        notes += [n for m in model.modules() if (n := getattr(m, "weights_note", ""))]
    frozen = freeze_modules(model, list(cfg.train.freeze))
    model.to(info.device)
    ddp_model = _wrap_ddp(model, cfg, info)
    optimizer = build_optimizer(model, cfg.solver)
    batch = int(cfg.train.batch_size)
    schedule = build_schedule(
        cfg.solver, iters_per_epoch=_epoch_batches(data, 0, batch), total_batch=batch * info.world_size
    )
    amp = bool(cfg.amp) and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loop = LoopState()
    if state is not None:
        loop = _restore(state, model, optimizer, scaler, info, hooks)
    if opts.overwrite:  # only now: a run refused above keeps the earlier phase intact
        clear_phase(run, phase, info)
    trainer = Trainer(
        model=model,
        ddp_model=ddp_model,
        optimizer=optimizer,
        scaler=scaler,
        schedule=schedule,
        data=data,
        cfg=cfg,
        run=run,
        info=info,
        phase=phase,
        frozen=frozen,
        inputs=inputs,
        amp=amp,
        hooks=hooks,
        loop=loop,
        config_saved=state is not None,
    )
    if info.is_main and loop.iteration == 0:
        for note in notes:
            print_line(note)
        _announce(cfg, schedule, info, frozen)
    return trainer.train()


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class LoopState:
    iteration: int = 0  # optimizer steps done
    epoch: int = 0
    epoch_position: int = 0  # batches of `epoch` consumed by this process
    history: list[dict[str, float]] = field(default_factory=list)
    window: dict[str, torch.Tensor] = field(default_factory=dict)  # loss sums since the last log line
    window_count: int = 0
    rng: dict[str, Any] | None = None  # restored right before the first step

    def accumulate(self, losses: Mapping[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            self.window[name] = self.window.get(name, 0.0) + value
        self.window_count += 1

    def window_mean(self) -> dict[str, torch.Tensor]:
        mean = {k: v / self.window_count for k, v in self.window.items()}
        self.window, self.window_count = {}, 0
        return mean


class Trainer:
    """The loop and its state; everything periodic is a hook (see :mod:`lvisctl.engine.hooks`).

    Attributes hooks read: ``model`` (unwrapped), ``ddp_model``, ``optimizer``, ``scaler``, ``schedule``,
    ``data``, ``cfg``, ``run``, ``info``, ``phase``, ``loop`` (iteration, epoch, history), ``max_iter``,
    ``lr``, ``losses`` (the step's loss tensors, before backward), ``step_losses`` (detached, with the
    total ``loss``), ``grad_norm`` (on log steps), ``data_time`` / ``step_time`` (seconds), ``logger``
    (:class:`~lvisctl.engine.logging.TrainLogger`), ``last_good`` (newest checkpoint artifact, rank 0).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        ddp_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        schedule: WarmupStepSchedule,
        data: TrainData,
        cfg: Config,
        run: RunDir,
        info: DistInfo,
        phase: ckpt_io.Phase,
        frozen: Sequence[str],
        inputs: Sequence[Artifact | str | Path],
        amp: bool,
        hooks: Sequence[Hook],
        loop: LoopState,
        config_saved: bool = False,
    ) -> None:
        self.model, self.ddp_model, self.optimizer, self.scaler = model, ddp_model, optimizer, scaler
        self.schedule, self.data, self.cfg, self.run, self.info = schedule, data, cfg, run, info
        self.phase, self.frozen, self.inputs, self.amp = phase, list(frozen), list(inputs), amp
        self.hooks, self.loop = list(hooks), loop
        self.max_iter = schedule.max_iter
        self.lr = 0.0
        self.losses: dict[str, torch.Tensor] = {}
        self.step_losses: dict[str, torch.Tensor] = {}
        self.grad_norm: torch.Tensor | None = None
        self.data_time = self.step_time = 0.0
        self.last_good: Artifact | None = None
        self.logger: TrainLogger | None = None
        self.plot: Path | None = None
        self._config_saved = config_saved
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
        self.last_good = ckpt_io.latest_checkpoint(self.run, self.phase) if info.is_main else None
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
            where = self.last_good.path if (self.last_good is not None and self._kept(start)) else None
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
            ckpt, loop.iteration, loop.history, self.plot, model=self.model, is_main=info.is_main
        )

    def _loop(self) -> None:
        loop, batch = self.loop, int(self.cfg.train.batch_size)
        while loop.iteration < self.max_iter:
            tick = time.perf_counter()
            for images, targets in _epoch_loader(
                self.data, self.cfg, self.info, loop.epoch, loop.epoch_position * batch
            ):
                self.data_time = time.perf_counter() - tick
                # Ctrl-C during the last step: stop at this safe point. Under torchrun the ranks agree
                # first (run_step), so none stops alone and leaves the others blocked in a collective.
                if not self.info.distributed and self._interrupted():
                    raise KeyboardInterrupt
                self.call("before_step")
                self.run_step(images, targets)
                loop.iteration += 1
                loop.epoch_position += 1
                self.step_time = time.perf_counter() - tick - self.data_time
                self.call("after_step")
                if loop.iteration >= self.max_iter:
                    break
                tick = time.perf_counter()
            else:  # the epoch ran out before max_iter: next epoch from its start
                loop.epoch += 1
                loop.epoch_position = 0
                self.call("after_epoch")

    def run_step(self, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> None:
        """Forward, the ``before_backward`` hooks (non-finite check), backward, optional clipping, step."""
        device = self.info.device
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [_to_device(t, device) for t in targets]
        with torch.autocast(device_type=device.type, enabled=self.amp):
            loss_dict = self.ddp_model(images, targets)
        self.losses = {k: v.float() for k, v in loss_dict.items()}
        total = sum(self.losses.values())
        self._agreed = False
        self.call("before_backward")
        if not self._agreed:  # no non-finite check among the hooks: agree on the stop alone
            self.agree_step(None)
        if self.stop_requested:  # every rank raises at this same step (nothing applied)
            raise KeyboardInterrupt
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        clip = float(self.cfg.solver.clip_grad_norm)
        self.grad_norm = None
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self._params(), clip)
        elif self._log_step_next():
            self.grad_norm = _grad_norm(self._params(), self.scaler)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_losses = {"loss": total.detach(), **{k: v.detach() for k, v in self.losses.items()}}

    def agree_step(self, local_bad: torch.Tensor | None) -> bool:
        """What all ranks decide together each step, in one collective and one host sync: is a loss
        non-finite on any rank (``local_bad``, a bool tensor; None = not checked) and was Ctrl-C pressed
        on any (sets ``stop_requested``). Returns whether a loss is bad somewhere."""
        self._agreed = True
        any_bad, self.stop_requested = agree_flags(local_bad, self._interrupted(), self.info)
        return any_bad

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _log_step_next(self) -> bool:
        it = self.loop.iteration + 1
        return it % max(int(self.cfg.train.log_period), 1) == 0 or it == self.max_iter

    def set_train_mode(self) -> None:
        """Training mode, with the normalisation layers of frozen modules kept in eval mode."""
        self.ddp_model.train()
        set_frozen_eval(self.model, self.frozen)

    # -------------------------------------------------------------------------------------- saving
    def save_checkpoint(self, *, final: bool, best: Mapping[str, Any] | None = None) -> Artifact | None:
        """Save the full state (a collective: every rank joins the RNG gather, rank 0 writes).

        The resolved config is written and registered with the first checkpoint of a run, so a run that
        fails before it leaves no config behind. ``best`` = ``{"metric", "value"}``: ``<phase>_best.pt``.
        """
        rng, windows = _gather_rank_state(self.info, self.loop)
        if not self.info.is_main:
            return None
        if not self._config_saved:
            _save_config(self.run, self.data.saved_config(self.cfg), self.phase, self.data.inputs)
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
            "config": self.data.saved_config(self.cfg).to_dict(),
            "category_stats": self.data.category_stats.to_dict(),
            "hooks": {type(h).__name__: h.state_dict() for h in self.hooks if h.state_dict()},
        }
        saved = ckpt_io.save_checkpoint(self.run, state, inputs=self.inputs, best=best)
        self._saved_any = True
        return saved

    def finish_logs(self) -> None:
        """Loss curve (kind ``plot``), the logged history (kind ``log``) and metrics.jsonl, from rank 0."""
        if self.info.is_main:
            self.plot = _finish(self.run, self.phase, self.loop, self.last_good, self.cfg)

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


def _grad_norm(params: Sequence[torch.Tensor], scaler: torch.amp.GradScaler) -> torch.Tensor | None:
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return norm / scaler.get_scale() if scaler.is_enabled() else norm


def _to_device(target: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in target.items()}


# ------------------------------------------------------------------------------------------ data stream
class _SkipSampler(Sampler):
    """``sampler``'s epoch minus its first ``start`` indices (mid-epoch resume, any deterministic sampler)."""

    def __init__(self, sampler: Sampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)


def _set_epoch(data: TrainData, epoch: int) -> None:
    for obj in (data.sampler, data.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def _epoch_batches(data: TrainData, epoch: int, batch: int) -> int:
    _set_epoch(data, epoch)
    return len(data.sampler) // batch


def _epoch_loader(data: TrainData, cfg: Config, info: DistInfo, epoch: int, start: int) -> DataLoader:
    _set_epoch(data, epoch)
    batch = int(cfg.train.batch_size)
    if len(data.sampler) < batch:
        raise LvisctlError(
            f"data: one epoch has {len(data.sampler)} images per process, fewer than train.batch_size={batch}"
        )
    workers = int(cfg.train.num_workers)
    return DataLoader(
        data.dataset,
        batch_sampler=BatchSampler(_SkipSampler(data.sampler, start), batch, drop_last=True),
        collate_fn=data.collate_fn,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        # The worker base seed is drawn from this generator at iterator creation: seeding it per epoch
        # keeps the global RNG untouched, so a resumed run draws exactly what an uninterrupted one does.
        generator=torch.Generator().manual_seed(int(cfg.seed) * 100_003 + epoch),
        persistent_workers=False,  # forked per epoch: the sampler/dataset epoch is set before the fork
        worker_init_fn=init_train_worker,  # workers: no copy of the trainer's heap, no hoarded buffers
    )


# ------------------------------------------------------------------------------------------ model set-up
def _default_model_builder(cfg: Config, stats: CategoryStats) -> nn.Module:
    from lvisctl.modeling.build import build_model

    return build_model(cfg, stats)


def freeze_modules(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Freeze every parameter whose name starts with one of ``prefixes`` (stage 2: backbone, neck, RPN).

    Frozen = ``requires_grad=False`` (so also left out of the optimizer and DDP's gradient sync) and
    BatchNorm layers kept in eval mode (:func:`set_frozen_eval`) so their running statistics stay too.
    Prefixes of the flat RoI-head layout (``roi_heads.mask_head``) name the same modules as today's
    (``roi_heads.mask.head``; ``lvisctl.modeling.roi_keys``).
    """
    names = [n for n, _ in model.named_parameters()]
    unknown = [p for p in prefixes if not any(_under(n, upgrade_key(p)) for n in names)]
    if unknown:
        tops = sorted({n.split(".")[0] for n in names})
        raise LvisctlError(
            f"config: train.freeze names {unknown} that match no parameters (model has {tops})"
        )
    ours = upgrade_prefixes(prefixes)
    for name, param in model.named_parameters():
        if any(_under(name, p) for p in ours):
            param.requires_grad_(False)
    return list(prefixes)


def set_frozen_eval(model: nn.Module, prefixes: Sequence[str]) -> None:
    """Put the normalisation layers of frozen modules in eval mode (call after ``model.train()``)."""
    if not prefixes:
        return
    ours = upgrade_prefixes(prefixes)
    for name, module in model.named_modules():
        if any(_under(name, p) for p in ours) and isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def build_optimizer(model: nn.Module, solver: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters (the lr is set by the schedule every step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LvisctlError("config: train.freeze leaves no trainable parameters")
    return torch.optim.SGD(
        params,
        lr=float(solver["base_lr"]),
        momentum=float(solver["momentum"]),
        weight_decay=float(solver["weight_decay"]),
    )


def _wrap_ddp(model: nn.Module, cfg: Config, info: DistInfo) -> nn.Module:
    if not info.distributed:
        return model
    if cfg.train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=bool(cfg.train.find_unused_parameters)
    )


# ------------------------------------------------------------------------------------------ checkpoints
def _restore(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: DistInfo,
    hooks: Sequence[Hook],
) -> LoopState:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    saved_hooks = state.get("hooks", {}) or {}
    for hook in hooks:
        if type(hook).__name__ in saved_hooks:
            hook.load_state_dict(saved_hooks[type(hook).__name__])
    rngs = state["rng"]
    rng = rngs[info.rank] if len(rngs) == info.world_size else rngs[0]
    return LoopState(
        iteration=int(state["iteration"]),
        epoch=int(state["epoch"]),
        epoch_position=int(state["epoch_position"]),
        history=[dict(h) for h in state.get("history", [])],
        window={k: v.to(info.device) for k, v in _saved_window(state, info).items()},
        window_count=int(state.get("log_window_count", 0)),
        rng=rng,
    )


def _gather_rank_state(info: DistInfo, loop: LoopState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every rank's RNG states and log-window sums (one gather; on every rank, as rank 0 writes)."""
    local = (ckpt_io.capture_rng_state(), {k: v.detach().cpu() for k, v in loop.window.items()})
    if not info.distributed:
        return [local[0]], [local[1]]
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, local)
    return [g[0] for g in gathered], [g[1] for g in gathered]


def _saved_window(state: Mapping[str, Any], info: DistInfo) -> dict[str, torch.Tensor]:
    """This rank's saved loss sums; after a change of world size (or from an older checkpoint that kept
    rank 0's only) the mean over the saved ranks, which the rank-averaged log line then equals."""
    windows = state.get("log_windows") or [state.get("log_window", {}) or {}]
    if len(windows) == info.world_size:
        return dict(windows[info.rank])
    keys = windows[0].keys()
    return {k: torch.stack([w[k] for w in windows]).mean(dim=0) for k in keys}


# ------------------------------------------------------------------------------------------ bookkeeping
def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save_config(
    run: RunDir, cfg: Config, phase: ckpt_io.Phase, inputs: Sequence[Artifact | str | Path]
) -> None:
    path = run.output_path(f"config_{phase.name}.yaml", overwrite=True)
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    meta = {"stage": phase.stage, "phase": phase.name}
    run.register("config", path, inputs=inputs, config=cfg.to_dict(), meta=meta)


def _announce(cfg: Config, schedule: WarmupStepSchedule, info: DistInfo, frozen: Sequence[str]) -> None:
    steps = ", ".join(str(m) for m in schedule.milestones) or "none"
    total = int(cfg.train.batch_size) * info.world_size
    print_line(
        f"training {schedule.max_iter} iterations on {info.world_size} x {info.device.type}, batch {total}, "
        f"lr {schedule.lr:.4g} (x{schedule.gamma} at {steps}), warm-up {schedule.warmup_iters}"
        + (f", frozen: {', '.join(frozen)}" if frozen else "")
    )


def _finish(
    run: RunDir, phase: ckpt_io.Phase, loop: LoopState, final_ckpt: Artifact | None, cfg: Config
) -> Path | None:
    """Loss curve (kind ``plot``), the logged history and metrics.jsonl (kind ``log``) from rank 0."""
    if not loop.history:
        return None
    inputs = [final_ckpt] if final_ckpt else []
    meta = {"stage": phase.stage, "phase": phase.name}
    metrics = run.root / "logs" / f"metrics_{phase.name}.jsonl"
    if metrics.is_file():
        run.register("log", metrics, inputs=inputs, meta={**meta, "what": "metrics"})
    # registered after metrics.jsonl: run.latest("log", phase=...) stays the history json
    log_path = run.output_path(f"logs/train_{phase.name}.json", overwrite=True)
    atomic_write_json(log_path, {"stage": phase.stage, "phase": phase.name, "history": loop.history})
    run.register("log", log_path, inputs=inputs, meta=meta)
    plot_path = run.output_path(f"plots/loss_{phase.name}.png", overwrite=True)
    log_scale = str(cfg.get("log", {}).get("loss_plot_scale", "log")) != "linear"
    plot_loss_curves(loop.history, plot_path, title=f"{phase} training losses", log_scale=log_scale)
    run.register("plot", plot_path, inputs=inputs, meta={**meta, "what": "loss"})
    return plot_path
