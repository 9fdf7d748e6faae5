"""The assembly of a training run: the trainer, from the model, optimizer and data builders and the hooks.

:func:`build_trainer` is detectron2's ``DefaultTrainer.__init__`` for lvisctl: the builders default to the
model layer (:func:`lvisctl.modeling.build.build_model`), the engine's SGD (:func:`build_optimizer`), the data
layer (:func:`lvisctl.data.train_data.build_train_data`) and :func:`lvisctl.training.default_hooks`; a test or
an experiment passes others. What a phase starts from (fresh, ``train.init_from``, or a checkpoint to resume)
is decided before, by :func:`lvisctl.training.train` (:class:`Start`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lvisctl.data.categories import CategoryStats
from lvisctl.data.train_data import TrainData, build_train_data
from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import DistInfo
from lvisctl.engine.hooks import GradientHook, Hook
from lvisctl.engine.init_weights import StartingPoint, init_source, load_starting_weights, model_build_config
from lvisctl.engine.loader import epoch_batches
from lvisctl.engine.logging import print_line
from lvisctl.engine.model_setup import build_optimizer, freeze_modules, wrap_ddp
from lvisctl.engine.resume import check_inputs_unchanged, clear_phase
from lvisctl.engine.schedule import WarmupStepSchedule, build_schedule
from lvisctl.engine.state import Restorable, restore_state
from lvisctl.engine.trainer import Trainer, TrainerContext, TrainerParts
from lvisctl.errors import LvisctlError
from lvisctl.rundir import Artifact, RunDir
from lvisctl.training.hooks import default_hooks

ModelBuilder = Callable[[Any, CategoryStats], nn.Module]
DataBuilder = Callable[[Any, RunDir, DistInfo], TrainData]
OptimizerBuilder = Callable[[nn.Module, Any], torch.optim.Optimizer]


def default_model_builder(cfg: Any, stats: CategoryStats) -> nn.Module:
    from lvisctl.modeling.build import build_model

    return build_model(cfg, stats)


@dataclass
class Builders:
    """How the parts are made; None = the default (model layer, data layer, default hooks)."""

    model: ModelBuilder | None = None
    data: DataBuilder | None = None
    optimizer: OptimizerBuilder = build_optimizer
    hooks: Sequence[Hook] | None = None


@dataclass
class Start:
    """Where a phase starts: this process, the phase, and either the checkpoint it resumes (``state``, its
    manifest entry ``state_artifact``) or the weights it is initialised from (``init``; None = ImageNet)."""

    info: DistInfo
    phase: ckpt_io.Phase
    state: Mapping[str, Any] | None = None
    state_artifact: Artifact | None = None
    init: StartingPoint | None = None
    notes: list[str] = field(default_factory=list)  # what the config resolution said, printed at the start
    allow_changed_inputs: bool = False
    overwrite: bool = False


def build_trainer(cfg: Any, run: RunDir, start: Start, builders: Builders | None = None) -> Trainer:
    """The trainer of ``cfg``'s phase ``start.phase`` in ``run``: hooks (the validation data checked first),
    data, model (with its starting weights, frozen parts, DDP), optimizer, schedule, AMP scaler, and the
    restored state of a resume. The order is part of the exact-resume contract (the model is built after
    the data, from the same global RNG state)."""
    builders = builders or Builders()
    info, state = start.info, start.state
    hooks = list(builders.hooks) if builders.hooks is not None else default_hooks(cfg, run)
    if float(cfg.solver.clip_grad_norm) > 0 and not any(isinstance(h, GradientHook) for h in hooks):
        # clipping is a hook now: a hand-made hook list without it would silently train unclipped
        raise LvisctlError("config: solver.clip_grad_norm > 0 needs the GradientHook in the hook list")
    data = (builders.data or build_train_data)(cfg, run, info)
    source = start.init.source if start.init is not None else init_source(cfg, run, start.phase)
    inputs = [*data.inputs, *([source] if source is not None else [])]
    if start.state_artifact is not None and not start.allow_changed_inputs:
        check_inputs_unchanged(run, start.state_artifact, inputs)
    resumed_or_init = state is not None or start.init is not None
    model = (builders.model or default_model_builder)(
        model_build_config(cfg, resumed_or_init), data.category_stats
    )
    notes = list(start.notes)
    if start.init is not None:  # a resume loads its own weights below
        notes += load_starting_weights(model, start.init, cfg, data.category_stats)
    elif state is None:  # a fresh start from ImageNet weights: say what the trunk file did not fill
        notes += [n for m in model.modules() if (n := getattr(m, "weights_note", ""))]
    frozen = freeze_modules(model, list(cfg.train.freeze))
    model.to(info.device)
    ddp_model = wrap_ddp(model, cfg, info)
    optimizer = builders.optimizer(model, cfg.solver)
    batch = int(cfg.train.batch_size)
    schedule = build_schedule(
        cfg.solver, iters_per_epoch=epoch_batches(data, 0, batch), total_batch=batch * info.world_size
    )
    amp = bool(cfg.amp) and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loop = None
    if state is not None:
        loop = restore_state(state, Restorable(model, optimizer, scaler, hooks), info)
    if start.overwrite:  # only now: a run refused above keeps the earlier phase intact
        clear_phase(run, start.phase, info)
    parts = TrainerParts(model, optimizer, scaler, schedule, data, ddp_model=ddp_model, frozen=frozen)
    context = TrainerContext(cfg, run, info, start.phase, inputs, amp=amp, config_saved=state is not None)
    trainer = Trainer(parts, context, hooks, loop)
    if info.is_main and trainer.loop.iteration == 0:
        for note in notes:
            print_line(note)
        announce(cfg, schedule, info, frozen)
    return trainer


def announce(cfg: Any, schedule: WarmupStepSchedule, info: DistInfo, frozen: Sequence[str]) -> None:
    steps = ", ".join(str(m) for m in schedule.milestones) or "none"
    total = int(cfg.train.batch_size) * info.world_size
    print_line(
        f"training {schedule.max_iter} iterations on {info.world_size} x {info.device.type}, batch {total}, "
        f"lr {schedule.lr:.4g} (x{schedule.gamma} at {steps}), warm-up {schedule.warmup_iters}"
        + (f", frozen: {', '.join(frozen)}" if frozen else "")
    )
