"""``train``: one training phase in a run directory, the entry point of ``lvisctl train``, ``finetune-bags``
and the pipelines.

It joins the process group (torchrun), holds the phase's lock for the whole command, finds what the phase
starts from (a checkpoint to resume, with the inputs and config it was made with; or ``train.init_from``),
seeds, builds the trainer (:func:`lvisctl.training.build.build_trainer`) and runs it. A resume refuses
training inputs whose sha256 changed since the checkpoint (unless ``allow_changed_inputs``), and falls back
to the older checkpoint when the newest is damaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict, Unpack

from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import (
    DistInfo,
    cleanup_distributed,
    init_distributed,
    pick_device,
    set_cudnn_benchmark,
    set_deterministic,
    timeout_of,
)
from lvisctl.engine.hooks import Hook
from lvisctl.engine.init_weights import prepare_config
from lvisctl.engine.resume import check_resume_config, find_resume_state, saved_process_config
from lvisctl.engine.state import seed_everything
from lvisctl.engine.trainer import TrainResult
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from lvisctl.training.build import Builders, DataBuilder, ModelBuilder, Start, build_trainer


class Custom(TypedDict, total=False):
    """Stand-ins for the default parts (tests, experiments): see :class:`lvisctl.training.build.Builders`."""

    build_model: ModelBuilder
    build_data: DataBuilder
    hooks: Sequence[Hook]


def train(
    cfg: Any | None,
    run_dir: str | Path,
    *,
    stage: int = 1,
    phase: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed_inputs: bool = False,
    **custom: Unpack[Custom],
) -> TrainResult:
    """Train one stage in ``run_dir``; with ``resume`` continue from its newest checkpoint of ``stage``.

    ``cfg`` may be None only with ``resume`` (the checkpoint's config is used). ``overwrite`` replaces
    this phase's earlier checkpoints (and its config, logs, plot) instead of refusing them.
    ``custom`` (``build_model``, ``build_data``, ``hooks``) replaces the model and data layers and
    :func:`~lvisctl.training.default_hooks`; tests pass small stand-ins.
    """
    if cfg is None and not resume:
        raise LvisctlError("train: a config is required unless resuming (--resume)")
    if overwrite and resume:
        raise LvisctlError("train: --overwrite starts the phase again; it cannot be combined with --resume")
    unknown = sorted(set(custom) - set(Custom.__annotations__))
    if unknown:
        raise TypeError(f"train() got unexpected keyword arguments {unknown}")
    phase_ = ckpt_io.Phase(stage, phase or "")
    # the process group's backend follows the device: a resume without --config takes the saved one's
    process_cfg = cfg if cfg is not None else saved_process_config(RunDir(run_dir), phase_)
    info = init_distributed(process_cfg.get("device", "auto"), timeout_of(process_cfg))
    builders = Builders(custom.get("build_model"), custom.get("build_data"), hooks=custom.get("hooks"))
    try:
        run = RunDir(run_dir)
        with run.phase_lock(phase_.name):  # one writer per phase for the command's whole life
            start = Start(info, phase_, allow_changed_inputs=allow_changed_inputs, overwrite=overwrite)
            return _train(cfg, run, start, resume, builders)
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


def _train(cfg: Any | None, run: RunDir, start: Start, resume: bool, builders: Builders) -> TrainResult:
    info, phase = start.info, start.phase
    found = find_resume_state(run, phase, resume, info, overwrite=start.overwrite)
    if found is not None:
        state, state_art = found
        notes: list[str] = []
        if cfg is not None:  # the same resolution as the fresh run, so an unchanged config compares equal
            cfg, notes, _ = prepare_config(cfg, run, phase)
        cfg = check_resume_config(cfg, state, run)
        if state.get("final"):  # nothing left to do (e.g. a re-run demo)
            final = ckpt_io.latest_checkpoint(run, phase, final=True)
            history = list(state.get("history", []))
            ckpt = run.path_of(final.path)
            return TrainResult(ckpt, int(state["iteration"]), history, skipped=True, is_main=info.is_main)
        info = replace(info, device=pick_device(cfg.device, info.local_rank))  # the saved config's device
        start = replace(start, info=info, state=state, state_artifact=state_art, notes=notes)
    else:
        assert cfg is not None
        cfg, notes, init = prepare_config(cfg, run, phase)
        start = replace(start, init=init, notes=notes)
    _process_settings(cfg, start.info)
    return build_trainer(cfg, run, start, builders).train()


def _process_settings(cfg: Any, info: DistInfo) -> None:
    """cuDNN autotuning, deterministic kernels and the global seeds, before anything is built."""
    set_cudnn_benchmark(cfg, info.device, training=True)
    set_deterministic(bool(cfg.train.deterministic), info.device)
    seed_everything(int(cfg.seed))
