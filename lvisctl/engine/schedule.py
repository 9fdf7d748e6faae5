"""Learning-rate schedule of the paper's section 3.2 (the mmdet/detectron2 "1x/2x" recipe).

SGD with lr 0.02 at a total batch of 16 images, scaled linearly to the actual total batch (Goyal et al.,
"Accurate, Large Minibatch SGD"): ``lr = base_lr * total_batch / 16``. Linear warm-up from
``warmup_factor * lr`` over ``warmup_iters`` iterations, then step decay by ``gamma`` (0.1) at the
milestones: epochs (16, 22) of 24 for small backbones, (11, 14) of 15 for large ones.

The schedule is kept in iterations, the one counter that survives a resume unambiguously. Epochs are
converted with the number of iterations of one epoch; for short runs (CPU demos, tests) ``max_iter``
overrides the length and the epoch milestones are scaled to it proportionally (16/24 and 22/24 of
``max_iter``), unless ``step_iters`` names them explicitly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lvisctl.errors import LvisctlError


def scaled_lr(base_lr: float, total_batch: int, ref_batch: int = 16) -> float:
    """The linear scaling rule: ``base_lr`` is the lr for ``ref_batch`` images per iteration."""
    if total_batch < 1 or ref_batch < 1:
        raise ValueError(f"batch sizes must be positive, got total {total_batch}, reference {ref_batch}")
    return base_lr * total_batch / ref_batch


@dataclass(frozen=True)
class WarmupStepSchedule:
    """lr(it) = lr * warmup(it) * gamma ** (number of milestones <= it), for it in [0, max_iter).

    ``it`` is the 0-based index of the optimizer step about to be taken. Warm-up is linear, as in mmdet
    and detectron2: ``warmup(it) = f + (1 - f) * it / warmup_iters`` for ``it < warmup_iters``, else 1.
    """

    lr: float
    max_iter: int
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.001

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {list(self.milestones)}")

    def warmup(self, it: int) -> float:
        if it >= self.warmup_iters:
            return 1.0
        alpha = it / self.warmup_iters
        return self.warmup_factor + (1.0 - self.warmup_factor) * alpha

    def decay(self, it: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, it)

    def lr_at(self, it: int) -> float:
        return self.lr * self.warmup(it) * self.decay(it)

    def state_dict(self) -> dict[str, Any]:
        """Plain data (checkpoints are loaded with ``weights_only=True``)."""
        state = asdict(self)
        state["milestones"] = list(self.milestones)
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> WarmupStepSchedule:
        return cls(**{**state, "milestones": tuple(state["milestones"])})


def build_schedule(
    solver: Mapping[str, Any], *, iters_per_epoch: int, total_batch: int
) -> WarmupStepSchedule:
    """The schedule for the ``solver:`` config section and the actual epoch length and total batch."""
    epochs = int(solver["epochs"])
    steps = [float(s) for s in solver["steps"]]
    if any(not 0 < s <= epochs for s in steps):
        raise LvisctlError(f"solver.steps: decay epochs {steps} must lie in (0, solver.epochs={epochs}]")
    max_iter = int(solver["max_iter"])
    if max_iter > 0:
        milestones = [int(s) for s in solver["step_iters"]] or [round(s / epochs * max_iter) for s in steps]
    else:
        if iters_per_epoch < 1:
            raise LvisctlError(
                "data: an epoch has no full batch; use fewer images per batch (train.batch_size)"
            )
        max_iter = epochs * iters_per_epoch
        milestones = [math.floor(s * iters_per_epoch) for s in steps]
    # A warm-up longer than the run (short CPU runs with the default 500) would never reach the lr:
    # it ends at the first decay at the latest.
    warmup = min(int(solver["warmup_iters"]), min(milestones, default=max_iter))
    return WarmupStepSchedule(
        lr=scaled_lr(float(solver["base_lr"]), total_batch, int(solver["ref_batch"])),
        max_iter=max_iter,
        milestones=tuple(milestones),
        gamma=float(solver["gamma"]),
        warmup_iters=warmup,
        warmup_factor=float(solver["warmup_factor"]),
    )


def set_lr(param_groups: Sequence[dict[str, Any]], lr: float) -> None:
    """Apply ``lr`` to every optimizer group (times its ``lr_scale``, 1 unless a group asks otherwise)."""
    for group in param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
