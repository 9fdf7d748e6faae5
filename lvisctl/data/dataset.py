"""Training samples from an LVIS file: decode once, augment with per-sample seeded randomness, collate.

Keys. ``dataset[key]`` takes either an ``int`` image index (epoch 0, position = index; handy for tests
and inspection) or the ``(image_index, epoch, position)`` tuple the samplers in
:mod:`lvisctl.data.samplers` yield. Every random choice of the augmentations comes from a generator
seeded by ``(seed, epoch, position)``, so a sample does not depend on DataLoader workers, on which
samples came before it, or on global RNG state: the requirement for bit-identical resume.

The dataset takes any ``LvisData``-like object (duck typing): ``images: dict[int, dict]`` (LVIS image
records with ``height``, ``width`` and optional ``neg_category_ids`` / ``not_exhaustive_category_ids``),
``anns_by_image: dict[int, list[dict]]`` (LVIS annotations with polygon or RLE ``segmentation``,
``bbox``, ``category_id``) and ``image_path(image_id) -> Path``.
"""

from __future__ import annotations

import ctypes
import gc
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from lvisctl.data.categories import CategoryMap
from lvisctl.data.image_io import read_image_tensor
from lvisctl.data.lvis import ann_to_rle
from lvisctl.data.samplers import (
    EpochSampler,
    ExtraImagesSampler,
    build_train_sampler,
    image_frequency_from_sets,
    repeat_factors,
)
from lvisctl.data.transforms.base import Sample, Transform, make_boxes, sample_generator, tight_boxes
from lvisctl.data.transforms.compose import build_train_transforms
from lvisctl.errors import LvisctlError

SampleKey = int | tuple[int, int, int]


class LvisTrainDataset(torch.utils.data.Dataset):
    """``(image, target)`` training pairs (contract in ARCHITECTURE.md, "Training samples").

    ``image_ids``: the images with at least one annotation of a mapped class, sorted by id. ``ignore_boxes``:
    per-image XYXY boxes of pseudo labels treated as missing annotations. ``loss_weight``: the lambda of
    pseudo-labelled extra datasets (1.0 for LVIS). ``box_from_mask``: initial boxes are the tight boxes
    of the decoded masks (the aligned-box setting); otherwise the annotation ``bbox``.
    """

    def __init__(
        self,
        lvis_data: Any,
        category_map: CategoryMap,
        transforms: Transform | None = None,
        *,
        seed: int = 0,
        ignore_boxes: Mapping[int, Any] | None = None,
        loss_weight: float = 1.0,
        box_from_mask: bool = True,
    ):
        self.lvis = lvis_data
        self.category_map = category_map
        self.transforms = transforms
        self.seed = int(seed)
        self.ignore_boxes = dict(ignore_boxes or {})
        self.loss_weight = float(loss_weight)
        self.box_from_mask = box_from_mask
        # images without an annotation of a mapped class teach nothing a sampled batch needs: left out
        self.image_ids = [i for i in sorted(lvis_data.images) if self._label_set(i)]

    def __len__(self) -> int:
        return len(self.image_ids)

    # -- class statistics for RFS ---------------------------------------------------------------------
    def _label_set(self, image_id: int) -> set[int]:
        cmap = self.category_map
        # an LvisStore lists an image's category ids without decoding its annotations (polygons)
        ids_of = getattr(self.lvis, "category_ids_of", None)
        if ids_of is not None:
            cat_ids = ids_of(image_id).tolist()
        else:
            cat_ids = [a["category_id"] for a in self.lvis.anns_by_image.get(image_id, ())]
        return {cmap.index(c) for c in cat_ids if c in cmap}

    def image_label_sets(self) -> list[set[int]]:
        """Contiguous class indices present in each image, in dataset index order."""
        return [self._label_set(i) for i in self.image_ids]

    def repeat_factors(self, t: float) -> np.ndarray:
        """RFS repeat factor of every image, with ``f(c)`` counted over this dataset's images."""
        sets = self.image_label_sets()
        return repeat_factors(sets, image_frequency_from_sets(sets), t)

    # -- loading ----------------------------------------------------------------------------------------
    def load(self, index: int) -> Sample:
        """The un-augmented sample of image ``index``: decoded image, masks and federated fields."""
        image_id = self.image_ids[index]
        record = self.lvis.images[image_id]
        image = _read_image(self.lvis, image_id, record)
        h, w = image.shape[-2:]
        cmap = self.category_map
        anns = [a for a in self.lvis.anns_by_image.get(image_id, ()) if a["category_id"] in cmap]
        masks = torch.from_numpy(_decode_masks(anns, h, w))
        labels = torch.tensor([cmap.index(a["category_id"]) for a in anns], dtype=torch.int64)
        if self.box_from_mask:
            boxes = tight_boxes(masks)
        else:
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        keep = masks.flatten(1).any(dim=1).bool()  # degenerate polygons decode to nothing
        ignore = torch.as_tensor(np.asarray(self.ignore_boxes.get(image_id, []), dtype=np.float32))
        return {
            "image": tv_tensors.Image(image),
            "masks": tv_tensors.Mask(masks[keep]),
            "boxes": make_boxes(boxes[keep], h, w),
            "labels": labels[keep],
            "ignore_boxes": make_boxes(ignore, h, w),
            "neg_labels": _index_tensor(cmap, record.get("neg_category_ids", ())),
            "not_exhaustive_labels": _index_tensor(cmap, record.get("not_exhaustive_category_ids", ())),
            "image_id": int(image_id),
            "loss_weight": self.loss_weight,
        }

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, dict[str, Any]]:
        index, epoch, position = (int(key), 0, int(key)) if isinstance(key, (int, np.integer)) else key
        sample = self.load(int(index))
        if self.transforms is not None:
            sample = self.transforms(sample, sample_generator(self.seed, epoch, position), self)
        return to_training_pair(sample)


class ConcatTrainDataset(torch.utils.data.Dataset):
    """Several training datasets behind one index range (LVIS first, then self-training's extra images).

    Index ``i`` belongs to the first part whose cumulative length exceeds it; the part receives the key
    with its own local index and the unchanged ``(epoch, position)``, so its augmentations (Mosaic
    partners from the same part, loss weight) and their seeding are those of the part alone.
    """

    def __init__(self, parts: Sequence[LvisTrainDataset]):
        if not parts:
            raise ValueError("ConcatTrainDataset needs at least one dataset")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # offsets[k] = first index of part k

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(part, local index)`` of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return part, int(index - self.offsets[part])

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, dict[str, Any]]:
        index, epoch, position = (int(key), 0, int(key)) if isinstance(key, (int, np.integer)) else key
        part, local = self.locate(int(index))
        return self.parts[part][(local, int(epoch), int(position))]


def to_training_pair(sample: Sample) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sample dict -> ``(image float [3,H,W] in [0,1], target)`` with plain tensors."""
    image = sample["image"].as_subclass(torch.Tensor).to(torch.float32).div_(255.0)
    target = {
        "boxes": sample["boxes"].as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4),
        "labels": sample["labels"].to(torch.int64),
        "masks": sample["masks"].as_subclass(torch.Tensor).to(torch.uint8),
        "image_id": int(sample["image_id"]),
        "neg_labels": sample["neg_labels"],
        "not_exhaustive_labels": sample["not_exhaustive_labels"],
        "ignore_boxes": sample["ignore_boxes"].as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4),
        "loss_weight": float(sample["loss_weight"]),
    }
    return image, target


def init_train_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` of ``train``: keep each worker's private memory to its live samples.

    A forked worker shares the trainer's memory until it writes to a page. ``gc.freeze`` keeps full
    collections off the inherited objects (a list splice: no object is touched), so they do not copy
    the trainer's Python heap into the worker. Then large buffers: glibc raises its mmap threshold to
    the largest block freed so far (up to 32 MiB), so after the first image the per-sample image and
    mask buffers come from the heap, whose freed space stays with the worker: ~100-200 MB per worker
    at stage-1 sizes (``benchmarks/data_scale.py``, docs/scale.md). A fixed 1 MiB threshold maps them
    and gives them back when freed. Samples and their seeding do not change.
    """
    gc.freeze()
    _map_large_buffers()


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def _map_large_buffers(threshold: int = 1 << 20) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): their allocators have no such threshold to fix
        return
    libc.mallopt(_M_MMAP_THRESHOLD, threshold)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images and targets as lists (sizes differ; the model batches them itself)."""
    images = [b[0] for b in batch]
    targets = [b[1] for b in batch]
    return images, targets


def build_train_data(
    cfg: Mapping[str, Any],
    lvis_data: Any,
    category_map: CategoryMap,
    *,
    rank: int = 0,
    world_size: int = 1,
    ignore_boxes: Mapping[int, Any] | None = None,
    extra_data: Any | None = None,
) -> tuple[LvisTrainDataset | ConcatTrainDataset, EpochSampler]:
    """Dataset + sampler from a config (``seed``, ``augment:``, ``sampler:``), sharing the repeat factors.

    Self-training (paper 2.1): ``ignore_boxes`` are the LVIS images' missing-annotation pseudo labels
    (XYXY per image id). ``extra_data`` (an ``LvisData``-like pseudo-labelled image set) becomes a second
    dataset with loss weight ``data.extra_loss_weight`` and the LVIS category map (pseudo labels of other
    categories are dropped, and so are extra images left without labels); ``data.extra_per_epoch`` of its
    images join every epoch (:class:`~lvisctl.data.samplers.ExtraImagesSampler`).
    """
    aligned = bool(cfg["augment"]["box_from_mask"])
    seed = int(cfg.get("seed", 0))
    dataset = LvisTrainDataset(
        lvis_data, category_map, None, seed=seed, ignore_boxes=ignore_boxes, box_from_mask=aligned
    )
    if len(dataset) == 0:
        raise LvisctlError(
            f"{getattr(lvis_data, 'path', 'training data')}: no image has an annotation to train on"
        )
    factors = dataset.repeat_factors(float(cfg["sampler"]["rfs_threshold"]))
    dataset.transforms = build_train_transforms(cfg, repeat_factors=factors)
    sampler = build_train_sampler(cfg, factors, rank=rank, world_size=world_size)
    if extra_data is None:
        return dataset, sampler
    data_cfg = cfg["data"]
    weight, per_epoch = float(data_cfg["extra_loss_weight"]), int(data_cfg["extra_per_epoch"])
    if weight < 0 or per_epoch < 0:
        raise LvisctlError(
            f"config: data.extra_loss_weight ({weight}) and data.extra_per_epoch ({per_epoch}) must be >= 0"
        )
    # The extra images are sampled uniformly (not by RFS), so Mosaic draws their partners uniformly too.
    extra = LvisTrainDataset(
        extra_data,
        category_map,
        build_train_transforms(cfg, repeat_factors=None),
        seed=seed,
        loss_weight=weight,
        box_from_mask=aligned,
    )
    if len(extra) == 0:
        raise LvisctlError(
            f"{getattr(extra_data, 'path', 'extra images')}: no pseudo label of a training category "
            "(data.extra_images has nothing to train on)"
        )
    return ConcatTrainDataset([dataset, extra]), ExtraImagesSampler(sampler, len(extra), per_epoch)


def _read_image(lvis: Any, image_id: int, record: Mapping[str, Any]) -> torch.Tensor:
    """The image through the one reader (lvisctl/data/image_io.py), checked against the json's size."""
    path = Path(lvis.image_path(image_id))
    if not path.is_file():
        root, source = getattr(lvis, "image_root", "?"), getattr(lvis, "image_root_source", "")
        hint = "; set data.image_root (train) or --image-root" if source in ("", "the json's folder") else ""
        raise LvisctlError(
            f"{path}: image file not found (image {image_id}; image root {root}"
            f"{f' from {source}' if source else ''}{hint})"
        )
    hw = (int(record["height"]), int(record["width"])) if "height" in record else None
    return read_image_tensor(path, expected_hw=hw)


def _decode_masks(anns: Sequence[Mapping[str, Any]], h: int, w: int) -> np.ndarray:
    """``[N,H,W]`` uint8 masks of polygon / RLE segmentations, decoded by pycocotools in one call."""
    if not anns:
        return np.zeros((0, h, w), dtype=np.uint8)
    rles = [ann_to_rle(ann, h, w) for ann in anns]  # the one segmentation decoder (data/lvis.py)
    with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" deprecation, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(rles)  # [H,W,N], Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1))


def _index_tensor(cmap: CategoryMap, cat_ids: Sequence[int]) -> torch.Tensor:
    return torch.tensor(sorted(cmap.indices(cat_ids)), dtype=torch.int64)
