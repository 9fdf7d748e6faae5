"""The loop's resumable state: position, loss window, RNG states, and restoring it from a checkpoint.

A checkpoint holds every rank's RNG states and loss sums since the last log line (one gather), so a resumed
run, on the same or another number of ranks, draws and logs exactly what the uninterrupted one did.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import DistInfo
from lvisctl.engine.hooks import Hook, load_hook_states


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


@dataclass
class Restorable:
    """What a checkpoint restores besides the loop position."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    hooks: Sequence[Hook]


def restore_state(state: Mapping[str, Any], parts: Restorable, info: DistInfo) -> LoopState:
    """Load the checkpoint ``state`` into the parts and hooks; the loop position to continue from."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    load_hook_states(parts.hooks, state.get("hooks", {}) or {})
    rngs = state["rng"]
    rng = rngs[info.rank] if len(rngs) == info.world_size else rngs[0]
    return LoopState(
        iteration=int(state["iteration"]),
        epoch=int(state["epoch"]),
        epoch_position=int(state["epoch_position"]),
        history=[dict(h) for h in state.get("history", [])],
        window={k: v.to(info.device) for k, v in saved_window(state, info).items()},
        window_count=int(state.get("log_window_count", 0)),
        rng=rng,
    )


def gather_rank_state(info: DistInfo, loop: LoopState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every rank's RNG states and log-window sums (one gather; on every rank, as rank 0 writes)."""
    local = (ckpt_io.capture_rng_state(), {k: v.detach().cpu() for k, v in loop.window.items()})
    if not info.distributed:
        return [local[0]], [local[1]]
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, local)
    return [g[0] for g in gathered], [g[1] for g in gathered]


def saved_window(state: Mapping[str, Any], info: DistInfo) -> dict[str, torch.Tensor]:
    """This rank's saved loss sums; after a change of world size (or from an older checkpoint that kept
    rank 0's only) the mean over the saved ranks, which the rank-averaged log line then equals."""
    windows = state.get("log_windows") or [state.get("log_window", {}) or {}]
    if len(windows) == info.world_size:
        return dict(windows[info.rank])
    keys = windows[0].keys()
    return {k: torch.stack([w[k] for w in windows]).mean(dim=0) for k in keys}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
