"""The training loop for stage 1 (representation learning) and stage 2 (fine-tuning), paper section 2.

One loop for both stages; a stage differs only by its config: ``train.init_from`` (stage 2 defaults to
the stage-1 final checkpoint from the manifest) and ``train.freeze`` (module prefixes, applied in
:func:`freeze_modules`, the one place freezing happens).

Exact resume. The run is a function of (seed, config, data): a checkpoint stores the model, optimizer,
AMP scaler, the iteration, the data position (epoch and batches consumed in it) and every global RNG
state (per rank). On resume the sampler restarts the same epoch and skips the consumed batches, and the
DataLoader's worker base seed comes from a generator seeded by (seed, epoch) rather than from the global
RNG (the DataLoader draws it when an iterator is created, which would otherwise differ between a resumed
and an uninterrupted run). The data pipeline derives its own randomness from (seed, epoch, position).
So a run killed at any moment and resumed ends with bit-identical weights.

Safety. A non-finite loss stops the run before the backward pass, with the iteration and the loss name,
so the weights in memory and on disk stay those of the last good step; nothing is saved after it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from lvisctl.config import Config, upgrade_saved_config
from lvisctl.data.categories import CategoryStats
from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    barrier,
    broadcast_buffers,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    pick_device,
)
from lvisctl.engine.logging import TrainLogger, plot_loss_curves
from lvisctl.engine.schedule import WarmupStepSchedule, build_schedule, set_lr
from lvisctl.errors import LvisctlError
from lvisctl.rundir import Artifact, RunDir, atomic_write_json, atomic_write_text


class NonFiniteLossError(LvisctlError):
    """A loss became NaN/inf; the run stopped without saving the step's weights."""


@dataclass
class TrainData:
    """What the loop needs from the data layer.

    ``sampler`` yields this process's shard of one epoch (its own rank/world size), deterministically
    for a given ``set_epoch(e)``; ``dataset`` may also have ``set_epoch``. ``inputs`` are the files the
    data came from (manifest lineage).
    """

    dataset: Dataset
    sampler: Sampler
    collate_fn: Callable[[list], Any]
    category_stats: CategoryStats
    inputs: list[Artifact | str | Path] = field(default_factory=list)


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
    build_model: ModelBuilder | None = None,
    build_data: DataBuilder | None = None,
) -> TrainResult:
    """Train one stage in ``run_dir``; with ``resume`` continue from its newest checkpoint of ``stage``.

    ``cfg`` may be None only with ``resume`` (the checkpoint's config is used). ``build_model`` and
    ``build_data`` default to the model and data layers; tests pass small stand-ins.
    """
    if cfg is None and not resume:
        raise LvisctlError("train: a config is required unless resuming (--resume)")
    info = init_distributed(cfg.device if cfg is not None else "auto")
    try:
        phase_ = ckpt_io.Phase(stage, phase or "")
        return _train(cfg, RunDir(run_dir), info, phase_, resume, build_model, build_data)
    finally:
        cleanup_distributed()


def _train(
    cfg: Config | None,
    run: RunDir,
    info: DistInfo,
    stage: ckpt_io.Phase,
    resume: bool,
    build_model: ModelBuilder | None,
    build_data: DataBuilder | None,
) -> TrainResult:
    state = _find_resume_state(run, stage, resume, info)
    if state is not None:
        cfg = _check_resume_config(cfg, state, run)
        if state.get("final"):  # nothing left to do (e.g. a re-run demo)
            final = ckpt_io.latest_checkpoint(run, stage, final=True)
            history = list(state.get("history", []))
            ckpt = run.path_of(final.path)
            return TrainResult(ckpt, int(state["iteration"]), history, skipped=True, is_main=info.is_main)
        info = replace(info, device=pick_device(cfg.device, info.local_rank))  # the saved config's device
    assert cfg is not None
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=info.device.type == "cuda")
    _seed_everything(int(cfg.seed))

    data = (build_data or build_train_data)(cfg, run, info)
    model = (build_model or _default_model_builder)(cfg, data.category_stats)
    init_source = _init_source(cfg, run, stage)
    if init_source is not None and state is None:  # a resume loads its own weights below
        _load_init_weights(model, init_source, run)
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
        loop = _restore(state, model, optimizer, scaler, info)
    elif info.is_main:
        _save_config(run, cfg, stage, data.inputs)
    inputs = [*data.inputs, *([init_source] if init_source is not None else [])]
    if info.is_main and loop.iteration == 0:
        _announce(cfg, schedule, info, frozen)
    return _run_loop(
        ddp_model, model, data, optimizer, scaler, schedule, cfg, run, info, stage, loop, frozen, inputs, amp
    )


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


def _run_loop(
    ddp_model: nn.Module,
    model: nn.Module,
    data: TrainData,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: WarmupStepSchedule,
    cfg: Config,
    run: RunDir,
    info: DistInfo,
    stage: ckpt_io.Phase,
    loop: LoopState,
    frozen: Sequence[str],
    inputs: Sequence[Artifact | str | Path],
    amp: bool,
) -> TrainResult:
    batch, period = int(cfg.train.batch_size), max(int(cfg.train.checkpoint_period), 1)
    log_period = max(int(cfg.train.log_period), 1)
    logger = TrainLogger(
        total=schedule.max_iter,
        start=loop.iteration,
        tensorboard_dir=run.root / "tensorboard",
        stage=stage,
        enabled=info.is_main,
    )
    ddp_model.train()
    set_frozen_eval(model, frozen)
    if loop.rng is not None:
        ckpt_io.restore_rng_state(loop.rng)
    last_good: Artifact | None = ckpt_io.latest_checkpoint(run, stage) if info.is_main else None
    try:
        while loop.iteration < schedule.max_iter:
            for images, targets in _epoch_loader(data, cfg, info, loop.epoch, loop.epoch_position * batch):
                lr = schedule.lr_at(loop.iteration)
                set_lr(optimizer.param_groups, lr)
                losses = _train_step(
                    ddp_model, optimizer, scaler, images, targets, info, amp, cfg, loop, run, last_good, stage
                )
                loop.iteration += 1
                loop.epoch_position += 1
                loop.accumulate(losses)
                logged = None
                if loop.iteration % log_period == 0 or loop.iteration == schedule.max_iter:
                    logged = _log_values(loop.window_mean(), info)  # mean over the log period
                    loop.history.append({"iteration": loop.iteration, "lr": lr, **logged})
                logger.step(loop.iteration, logged, lr)
                final = loop.iteration == schedule.max_iter
                if final or loop.iteration % period == 0:
                    saved = _checkpoint(
                        model, optimizer, scaler, schedule, cfg, run, info, stage, loop, data, final, inputs
                    )
                    last_good = saved or last_good
                if final:
                    break
            else:  # the epoch ran out before max_iter: next epoch from its start
                loop.epoch += 1
                loop.epoch_position = 0
    finally:
        logger.close()
    broadcast_buffers(model, info)
    plot = _finish(run, info, stage, loop, last_good)
    barrier(info)
    # every rank knows where rank 0 put the final checkpoint
    ckpt = run.path_of(ckpt_io.checkpoint_relpath(stage, loop.iteration, final=True))
    return TrainResult(ckpt, loop.iteration, loop.history, plot, model=model, is_main=info.is_main)


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: list[torch.Tensor],
    targets: list[dict[str, Any]],
    info: DistInfo,
    amp: bool,
    cfg: Config,
    loop: LoopState,
    run: RunDir,
    last_good: Artifact | None,
    stage: ckpt_io.Phase,
) -> dict[str, torch.Tensor]:
    images = [img.to(info.device, non_blocking=True) for img in images]
    targets = [_to_device(t, info.device) for t in targets]
    with torch.autocast(device_type=info.device.type, enabled=amp):
        loss_dict = model(images, targets)
    losses = {k: v.float() for k, v in loss_dict.items()}
    total = sum(losses.values())
    _check_finite(losses, info, loop.iteration + 1, run, last_good, stage)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    clip = float(cfg.solver.clip_grad_norm)
    if clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
    scaler.step(optimizer)
    scaler.update()
    return {"loss": total.detach(), **{k: v.detach() for k, v in losses.items()}}


def _check_finite(
    losses: Mapping[str, torch.Tensor],
    info: DistInfo,
    iteration: int,
    run: RunDir,
    last_good: Artifact | None,
    stage: ckpt_io.Phase,
) -> None:
    values = torch.stack([v.detach() for v in losses.values()]) if losses else torch.zeros(1)
    finite = torch.isfinite(values)
    local_bad = not bool(finite.all())
    if not any_rank(local_bad, info):
        return
    if local_bad:
        idx = int((~finite).nonzero()[0])
        name, value = list(losses)[idx], float(values[idx])
        what = f"{name} is {value}" + (f" on rank {info.rank}" if info.distributed else "")
    else:
        what = "a loss is not finite on another rank"
    kept = f"last good checkpoint: {last_good.path}" if last_good else "no checkpoint was saved before it"
    raise NonFiniteLossError(
        f"{run.root}: {stage} stopped at iteration {iteration}: {what}; the step was not applied ({kept})"
    )


def _check_finite_weights(model: nn.Module, run: RunDir, stage: ckpt_io.Phase, iteration: int) -> None:
    """A finite loss can still overflow a gradient (fp32 has no GradScaler): never save such weights.

    DDP keeps the weights identical on every rank, so all ranks stop together.
    """
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        last = ckpt_io.latest_checkpoint(run, stage)
        kept = f"last good checkpoint: {last.path}" if last else "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"{run.root}: {stage} stopped at iteration {iteration}: weights {bad[0]} are not finite "
            f"(a gradient overflowed); not saved ({kept})"
        )


def _log_values(losses: Mapping[str, torch.Tensor], info: DistInfo) -> dict[str, float]:
    names = list(losses)
    mean = all_reduce_mean(torch.stack([losses[n] for n in names]), info).tolist()
    return dict(zip(names, (float(v) for v in mean), strict=True))


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
    )


def build_train_data(cfg: Config, run: RunDir, info: DistInfo) -> TrainData:
    """The data layer's dataset, RFS/plain sampler (sharded by rank) and collate for ``cfg``.

    Self-training (``data.pseudo_labels`` / ``data.extra_images``) adds ignore boxes and extra images;
    its pseudo-label files join the training data's inputs, so the checkpoints record them.
    """
    from lvisctl.data.dataset import build_train_data as build_dataset_and_sampler
    from lvisctl.data.dataset import collate_detection
    from lvisctl.data.lvis import load_lvis
    from lvisctl.data.self_training import load_self_training

    source = resolve_train_annotations(cfg, run)
    lvis = load_lvis(run.path_of(source.path) if isinstance(source, Artifact) else source)
    stats = lvis.category_stats()
    extra = load_self_training(cfg.data, run, train_image_ids=lvis.images)
    dataset, sampler = build_dataset_and_sampler(
        cfg,
        lvis,
        stats.category_map,
        rank=info.rank,
        world_size=info.world_size,
        ignore_boxes=extra.ignore_boxes,
        extra_data=extra.extra_data,
    )
    return TrainData(dataset, sampler, collate_detection, stats, inputs=[source, *extra.inputs])


def resolve_train_annotations(cfg: Config, run: RunDir) -> Artifact | Path:
    """``data.train`` when set, else the newest training ``dataset`` artifact of the run directory."""
    configured = str(cfg.get("data", {}).get("train", "") or "")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise LvisctlError(f"{path}: training annotations (data.train) not found")
        return path
    datasets = run.find("dataset", split="train") or [
        a for a in run.artifacts("dataset") if "train" in Path(a.path).name
    ]
    if not datasets:
        raise LvisctlError(
            f"{run.manifest_path}: no training data: set data.train=FILE or register a dataset "
            "(lvisctl data synth --run-dir DIR)"
        )
    run.resolve(datasets[-1])
    return datasets[-1]


# ------------------------------------------------------------------------------------------ model set-up
def _default_model_builder(cfg: Config, stats: CategoryStats) -> nn.Module:
    from lvisctl.modeling.build import build_model

    return build_model(cfg, stats)


def freeze_modules(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Freeze every parameter whose name starts with one of ``prefixes`` (stage 2: backbone, neck, RPN).

    Frozen = ``requires_grad=False`` (so also left out of the optimizer and DDP's gradient sync) and
    BatchNorm layers kept in eval mode (:func:`set_frozen_eval`) so their running statistics stay too.
    """
    names = [n for n, _ in model.named_parameters()]
    unknown = [p for p in prefixes if not any(_under(n, p) for n in names)]
    if unknown:
        tops = sorted({n.split(".")[0] for n in names})
        raise LvisctlError(
            f"config: train.freeze names {unknown} that match no parameters (model has {tops})"
        )
    for name, param in model.named_parameters():
        if any(_under(name, p) for p in prefixes):
            param.requires_grad_(False)
    return list(prefixes)


def set_frozen_eval(model: nn.Module, prefixes: Sequence[str]) -> None:
    """Put the normalisation layers of frozen modules in eval mode (call after ``model.train()``)."""
    if not prefixes:
        return
    for name, module in model.named_modules():
        if any(_under(name, p) for p in prefixes) and isinstance(module, nn.modules.batchnorm._NormBase):
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


def _init_source(cfg: Config, run: RunDir, stage: ckpt_io.Phase) -> Artifact | Path | None:
    """``train.init_from``, or for stage > 1 the previous stage's final checkpoint from the manifest."""
    if cfg.train.init_from:
        return Path(cfg.train.init_from).expanduser()
    if stage.stage == 1:
        return None
    source = ckpt_io.latest_checkpoint(run, stage.stage - 1, final=True)
    if source is None:
        raise LvisctlError(
            f"{run.manifest_path}: {stage} starts from the stage-{stage.stage - 1} final checkpoint, "
            "but none is recorded (train stage 1 first, or set train.init_from)"
        )
    return source


def _load_init_weights(model: nn.Module, source: Artifact | Path, run: RunDir) -> None:
    path = run.resolve(source) if isinstance(source, Artifact) else source
    load_matching(model, ckpt_io.load_checkpoint(path)["model"])


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Load the entries whose name and shape match; return the names of the model's that were not loaded.

    Stage 2 swaps the classifier (e.g. Balanced GroupSoftmax adds "others" logits), so its shape changes.
    """
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise LvisctlError("train.init_from: the checkpoint shares no weights with this model")
    model.load_state_dict(matching, strict=False)
    return [k for k in own if k not in matching]


# ------------------------------------------------------------------------------------------ checkpoints
def _find_resume_state(
    run: RunDir, stage: ckpt_io.Phase, resume: bool, info: DistInfo
) -> dict[str, Any] | None:
    existing = ckpt_io.latest_checkpoint(run, stage) if info.is_main else None
    rel = broadcast_object(existing.path if existing else None, info)
    if rel is None:
        if resume:
            raise LvisctlError(f"{run.manifest_path}: --resume given but no {stage} checkpoint is recorded")
        return None
    if not resume:
        raise LvisctlError(
            f"{run.root}: already holds {stage} checkpoints ({rel}); pass --resume to continue "
            "or use a new --run-dir"
        )
    path = run.resolve(ckpt_io.latest_checkpoint(run, stage)) if info.is_main else run.path_of(rel)
    barrier(info)
    return ckpt_io.load_checkpoint(path)


def _check_resume_config(cfg: Config | None, state: Mapping[str, Any], run: RunDir) -> Config:
    saved = upgrade_saved_config(state["config"])
    if cfg is None:
        return saved
    diffs = _config_diff(saved, cfg)
    if diffs:
        shown = "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
        raise LvisctlError(
            f"{run.root}: config differs from the checkpoint it would resume ({shown}); resume without "
            "--config/overrides to keep the saved config, or train in a new --run-dir"
        )
    return cfg


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _config_diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _restore(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: DistInfo,
) -> LoopState:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    rng = rngs[info.rank] if len(rngs) == info.world_size else rngs[0]
    return LoopState(
        iteration=int(state["iteration"]),
        epoch=int(state["epoch"]),
        epoch_position=int(state["epoch_position"]),
        history=[dict(h) for h in state.get("history", [])],
        window={k: v.to(info.device) for k, v in state.get("log_window", {}).items()},
        window_count=int(state.get("log_window_count", 0)),
        rng=rng,
    )


def _checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: WarmupStepSchedule,
    cfg: Config,
    run: RunDir,
    info: DistInfo,
    stage: ckpt_io.Phase,
    loop: LoopState,
    data: TrainData,
    final: bool,
    inputs: Sequence[Artifact | str | Path],
) -> Artifact | None:
    _check_finite_weights(model, run, stage, loop.iteration)
    rng = _gather_rng(info)  # a collective: every rank takes part, rank 0 writes
    if not info.is_main:
        return None
    state = {
        "stage": stage.stage,
        "phase": stage.name,
        "final": final,
        "iteration": loop.iteration,
        "epoch": loop.epoch,
        "epoch_position": loop.epoch_position,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rng,
        "history": [dict(h) for h in loop.history],
        "log_window": {k: v.detach().cpu() for k, v in loop.window.items()},
        "log_window_count": loop.window_count,
        "world_size": info.world_size,
        "config": cfg.to_dict(),
        "category_stats": data.category_stats.to_dict(),
    }
    saved = ckpt_io.save_checkpoint(run, state, inputs=inputs)
    if not final:
        ckpt_io.prune_checkpoints(run, stage, int(cfg.train.keep_checkpoints))
    return saved


def _gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    local = ckpt_io.capture_rng_state()
    if not info.distributed:
        return [local]
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered


# ------------------------------------------------------------------------------------------ bookkeeping
def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save_config(
    run: RunDir, cfg: Config, stage: ckpt_io.Phase, inputs: Sequence[Artifact | str | Path]
) -> None:
    path = run.output_path(f"config_{stage.name}.yaml", overwrite=True)
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    meta = {"stage": stage.stage, "phase": stage.name}
    run.register("config", path, inputs=inputs, config=cfg.to_dict(), meta=meta)


def _announce(cfg: Config, schedule: WarmupStepSchedule, info: DistInfo, frozen: Sequence[str]) -> None:
    from rich.console import Console

    steps = ", ".join(str(m) for m in schedule.milestones) or "none"
    total = int(cfg.train.batch_size) * info.world_size
    Console(highlight=False).print(
        f"training {schedule.max_iter} iterations on {info.world_size} x {info.device.type}, batch {total}, "
        f"lr {schedule.lr:.4g} (x{schedule.gamma} at {steps}), warm-up {schedule.warmup_iters}"
        + (f", frozen: {', '.join(frozen)}" if frozen else "")
    )


def _finish(
    run: RunDir, info: DistInfo, stage: ckpt_io.Phase, loop: LoopState, final_ckpt: Artifact | None
) -> Path | None:
    """Loss curve (kind ``plot``) and the logged history (kind ``log``) from rank 0."""
    if not info.is_main or not loop.history:
        return None
    inputs = [final_ckpt] if final_ckpt else []
    log_path = run.output_path(f"logs/train_{stage.name}.json", overwrite=True)
    atomic_write_json(log_path, {"stage": stage.stage, "phase": stage.name, "history": loop.history})
    run.register("log", log_path, inputs=inputs, meta={"stage": stage.stage, "phase": stage.name})
    plot_path = run.output_path(f"plots/loss_{stage.name}.png", overwrite=True)
    plot_loss_curves(loop.history, plot_path, title=f"{stage} training losses")
    meta = {"stage": stage.stage, "phase": stage.name, "what": "loss"}
    run.register("plot", plot_path, inputs=inputs, meta=meta)
    return plot_path
