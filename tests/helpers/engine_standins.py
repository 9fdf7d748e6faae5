"""A tiny detector and dataset that follow the engine's contracts, for engine tests.

The model follows the torchvision detection convention (``model(images, targets) -> dict of losses``) and
draws from the global torch RNG (dropout, randperm) the way real detectors do (proposal sampling), so a
resume that forgot an RNG state would show. The dataset derives its randomness from (epoch, position) as
the real pipeline does, and the sampler is the real ``PlainSampler``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from lvisctl.data.categories import CategoryStats
from lvisctl.engine.hooks import Hook
from lvisctl.engine.trainer import TrainData


class TinyDetector(nn.Module):
    def __init__(self, num_classes: int = 3, *, nan_at: int = 0, sleep: float = 0.0) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.rpn = nn.Conv2d(8, 1, 1)
        self.roi_heads = nn.Sequential(nn.Dropout(0.3), nn.Linear(8, num_classes + 1))
        self.nan_at, self.sleep, self.calls = nan_at, sleep, 0

    def forward(self, images, targets=None):
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        feats = [self.backbone(img[None]) for img in images]
        objectness = torch.stack([self.rpn(f).mean() for f in feats])
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in feats])
        logits = self.roi_heads(pooled)
        labels = torch.stack([t["labels"][0] for t in targets])
        order = torch.randperm(len(images))  # like proposal sampling: consumes the global RNG
        loss_cls = nn.functional.cross_entropy(logits[order], labels[order])
        loss_obj = (objectness - 0.5).pow(2).mean()
        if self.nan_at and self.calls >= self.nan_at:
            loss_obj = loss_obj * float("nan")
        return {"loss_classifier": loss_cls, "loss_objectness": loss_obj}


def tiny_stats(num_classes: int = 3) -> CategoryStats:
    return CategoryStats.from_dict(
        {
            "cat_ids": list(range(1, num_classes + 1)),
            "names": [f"c{i}" for i in range(num_classes)],
            "image_count": [5] * num_classes,
            "instance_count": [5] * num_classes,
            "frequency": ["f"] * num_classes,
            "num_images": 12,
        }
    )


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 12, size: int = 16) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        index, epoch, position = item
        g = torch.Generator().manual_seed(1000 * epoch + position)
        label = index % 3 + 1
        image = torch.rand(3, self.size, self.size, generator=g) * 0.3
        image[label - 1] += 0.5  # learnable: the class is the bright channel
        target = {
            "labels": torch.tensor([label]),
            "boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
            "image_id": index,
        }
        return image, target


def collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def data_builder(n: int = 12):
    from lvisctl.data.samplers import PlainSampler

    def build(cfg, run, info):
        sampler = PlainSampler(n, seed=int(cfg.seed), rank=info.rank, world_size=info.world_size)
        return TrainData(TinyDataset(n), sampler, collate, tiny_stats())

    return build


def model_builder(nan_at: int = 0, sleep: float = 0.0):
    def build(cfg, stats):
        return TinyDetector(stats.num_classes, nan_at=nan_at, sleep=sleep)

    return build


def tiny_config(**overrides):
    from lvisctl.config import load_config

    base = {
        "device": "cpu",
        "train.batch_size": 2,
        "train.num_workers": 0,
        "train.checkpoint_period": 4,
        "train.log_period": 2,
        "solver.max_iter": 10,
        "solver.warmup_iters": 2,
        "solver.base_lr": 0.16,
        "model.backbone.weights": "none",  # the stand-in models have no ImageNet trunk to load
    }
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def main() -> None:
    """``python -m tests.helpers.engine_standins RUN_DIR SLEEP [key=value ...] [--resume]``."""
    from lvisctl.training import train

    run_dir, sleep, *items = sys.argv[1:]
    resume = "--resume" in items
    items = [i for i in items if i != "--resume"]
    cfg = tiny_config(**dict(i.split("=", 1) for i in items))
    train(
        cfg, run_dir, resume=resume, build_model=model_builder(sleep=float(sleep)), build_data=data_builder()
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()


REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


# The demo config shrunk for tests on the `tiny` synthetic preset (64 px images).
TINY_OVERRIDES = {
    "device": "cpu",
    "train.batch_size": 2,
    "train.num_workers": 0,
    "train.log_period": 1,
    "augment.train_scales": [64],
    "augment.max_size": 96,
    "augment.mosaic.size": 96,
    "model.backbone.tiny_width": 8,
    "model.fpn.out_channels": 16,
    "model.roi_heads.fc_dim": 32,
    "model.mask_head.conv_dim": 16,
    "model.mask_head.num_convs": 1,
    "sampler.rfs_threshold": 0.3,
}
DEMO_CONFIG = REPO_CONFIGS / "demo" / "stage1.yaml"


def tiny_items(**overrides) -> list[str]:
    return [f"{k}={v}".replace(" ", "") for k, v in {**TINY_OVERRIDES, **overrides}.items()]


def real_tiny_config(**overrides):
    from lvisctl.config import load_config

    return load_config(DEMO_CONFIG, tiny_items(**overrides))


def register_train_json(run_dir, train_json) -> None:
    from lvisctl.rundir import RunDir

    RunDir(run_dir).register("dataset", train_json, meta={"split": "train"})


def join_gloo(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` of a one-machine job (the tests' gloo workers)."""
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


def ddp_worker(rank: int, world_size: int, port: int, run_dir: str, out_dir: str) -> None:
    """One of ``world_size`` gloo processes training the real model; saves its final weights per rank."""
    from pathlib import Path

    from lvisctl.rundir.manifest import RunDir
    from lvisctl.training import train

    join_gloo(rank, world_size, port)
    register = RunDir.register

    def recording_register(self, kind, path, **kw):  # which ranks write the manifest?
        with open(Path(out_dir) / f"register_rank{rank}.txt", "a") as fh:
            fh.write(f"{kind}\n")
        return register(self, kind, path, **kw)

    RunDir.register = recording_register
    cfg = real_tiny_config(**{"solver.max_iter": 4, "train.checkpoint_period": 2})
    result = train(cfg, run_dir)
    torch.save(result.model.state_dict(), Path(out_dir) / f"weights_rank{rank}.pt")


class FailAt(Hook):
    """Raises ``exc`` after step ``at`` (after the checkpoint hook of that step, being last)."""

    def __init__(self, at: int, exc: BaseException) -> None:
        self.at, self.exc = at, exc

    def after_step(self, trainer):
        if trainer.loop.iteration == self.at:
            raise self.exc
