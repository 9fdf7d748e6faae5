"""The training data stream: one DataLoader per epoch, resumable mid-epoch and seeded per (seed, epoch)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from lvisctl.data.dataset import init_train_worker
from lvisctl.data.train_data import TrainData
from lvisctl.engine.distributed import DistInfo
from lvisctl.errors import LvisctlError


class SkipSampler(Sampler):
    """``sampler``'s epoch minus its first ``start`` indices (mid-epoch resume, any deterministic sampler)."""

    def __init__(self, sampler: Sampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)


def set_epoch(data: TrainData, epoch: int) -> None:
    for obj in (data.sampler, data.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def epoch_batches(data: TrainData, epoch: int, batch: int) -> int:
    set_epoch(data, epoch)
    return len(data.sampler) // batch


def epoch_loader(data: TrainData, cfg: Any, info: DistInfo, epoch: int, start: int) -> DataLoader:
    """The batches of ``epoch`` from its ``start``-th sample on (this process's shard)."""
    set_epoch(data, epoch)
    batch = int(cfg.train.batch_size)
    if len(data.sampler) < batch:
        raise LvisctlError(
            f"data: one epoch has {len(data.sampler)} images per process, fewer than train.batch_size={batch}"
        )
    workers = int(cfg.train.num_workers)
    return DataLoader(
        data.dataset,
        batch_sampler=BatchSampler(SkipSampler(data.sampler, start), batch, drop_last=True),
        collate_fn=data.collate_fn,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        # The worker base seed is drawn from this generator at iterator creation: seeding it per epoch
        # keeps the global RNG untouched, so a resumed run draws exactly what an uninterrupted one does.
        generator=torch.Generator().manual_seed(int(cfg.seed) * 100_003 + epoch),
        persistent_workers=False,  # forked per epoch: the sampler/dataset epoch is set before the fork
        worker_init_fn=init_train_worker,  # workers: no copy of the trainer's heap, no hoarded buffers
    )
