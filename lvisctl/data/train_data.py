"""Training data set-up for the engine: which annotation file, which image root, dataset + sampler.

The engine's loop only needs a :class:`TrainData`; everything about finding and loading the files lives
here, in the data layer, so the loop knows nothing of LVIS (and tests pass small stand-ins).

Paths: ``data.train``, ``data.val`` and ``data.image_root`` are taken relative to ``data.root`` when that
is set (detectron2's ``datasets/`` layout: ``data.root=datasets data.train=lvis/lvis_v1_train.json
data.image_root=coco``), else relative to the current directory. An empty ``data.train`` means the
newest training ``dataset`` artifact of the run directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch.utils.data import Dataset, Sampler

from lvisctl.config import Config
from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.rundir import Artifact, RunDir


class ShardInfo(Protocol):
    """What the data layer needs to know of the process group (``engine.distributed.DistInfo`` is one)."""

    rank: int
    world_size: int


@dataclass
class TrainData:
    """What the loop needs from the data layer.

    ``sampler`` yields this process's shard of one epoch (its own rank/world size), deterministically
    for a given ``set_epoch(e)``; ``dataset`` may also have ``set_epoch``. ``inputs`` are the files the
    data came from (manifest lineage; a resume checks that they did not change).
    """

    dataset: Dataset
    sampler: Sampler
    collate_fn: Callable[[list], Any]
    category_stats: CategoryStats
    inputs: list[Artifact | str | Path] = field(default_factory=list)
    # data.<key> given as `latest` -> the file it resolved to: the saved config records the file
    resolved: dict[str, str] = field(default_factory=dict)

    def saved_config(self, cfg: Config) -> Config:
        """``cfg`` as the run records it (config file, checkpoints): ``latest`` replaced by the files used."""
        if not self.resolved:
            return cfg
        return cfg.replace({f"data.{key}": path for key, path in self.resolved.items()})


def data_path(cfg: Mapping[str, Any], key: str) -> Path | None:
    """``data.<key>`` as a path (relative to ``data.root`` when set); None when the key is empty."""
    from lvisctl.data.lvis import configured_path

    return configured_path(cfg.get("data", {}) or {}, key)


def train_image_root(cfg: Mapping[str, Any]) -> Any:
    """The image root of the config's data (``data.image_root`` relative to ``data.root``), as every
    command resolves it (:func:`lvisctl.data.lvis.resolve_image_root`); None = the json's folder."""
    from lvisctl.data.lvis import resolve_image_root

    return resolve_image_root(cfg.get("data", {}) or {})


def resolve_train_annotations(cfg: Mapping[str, Any], run: RunDir) -> Artifact | Path:
    """``data.train`` when set, else the newest training ``dataset`` artifact of the run directory."""
    path = data_path(cfg, "train")
    if path is not None:
        if not path.is_file():
            raise LvisctlError(f"{path}: training annotations (data.train) not found")
        return path
    datasets = run.find("dataset", split="train") or [
        a for a in run.artifacts("dataset") if "train" in Path(a.path).name
    ]
    if not datasets:
        raise LvisctlError(
            f"{run.manifest_path}: no training data: set data.train=FILE (or a builtin name such as "
            f"lvis_v1_train), or record it once: lvisctl data register --run-dir {run.root} --train FILE "
            "--image-root DIR"
        )
    run.resolve(datasets[-1])
    return datasets[-1]


def resolve_val_annotations(cfg: Mapping[str, Any], run: RunDir) -> Artifact | Path | None:
    """``data.val`` when set, else the newest ``dataset`` artifact of split ``val``; None when neither."""
    path = data_path(cfg, "val")
    if path is not None:
        if not path.is_file():
            raise LvisctlError(f"{path}: validation annotations (data.val) not found")
        return path
    found = run.find("dataset", split="val")
    if not found:
        return None
    run.resolve(found[-1])
    return found[-1]


def build_train_data(cfg: Config, run: RunDir, info: ShardInfo) -> TrainData:
    """The data layer's dataset, RFS/plain sampler (sharded by rank) and collate for ``cfg``.

    Self-training (``data.pseudo_labels`` / ``data.extra_images``) adds ignore boxes and extra images;
    its pseudo-label files join the training data's inputs, so the checkpoints record them.
    """
    from lvisctl.data.dataset import build_train_data as build_dataset_and_sampler
    from lvisctl.data.dataset import collate_detection
    from lvisctl.data.lvis_cache import default_cache_dir, load_lvis_shared
    from lvisctl.data.self_training import load_self_training

    source = resolve_train_annotations(cfg, run)
    path = run.artifact_path(source) if isinstance(source, Artifact) else source
    # numpy buffers, not Python records: DataLoader workers share them without copy-on-read growth,
    # and a large file is parsed once per machine (the sha256-keyed cache, data/lvis_cache.py)
    lvis = load_lvis_shared(path, image_root=train_image_root(cfg), cache_dir=default_cache_dir())
    stats = lvis.category_stats()
    extra = load_self_training(cfg.data, run, train_image_ids=lvis.images, train_annotations=Path(path))
    dataset, sampler = build_dataset_and_sampler(
        cfg,
        lvis,
        stats.category_map,
        rank=info.rank,
        world_size=info.world_size,
        ignore_boxes=extra.ignore_boxes,
        extra_data=extra.extra_data,
    )
    return TrainData(
        dataset, sampler, collate_detection, stats, inputs=[source, *extra.inputs], resolved=extra.resolved
    )
