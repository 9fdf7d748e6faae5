"""Small training samples and dataset comparisons."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors

from lvisctl.data.transforms import (
    tight_boxes,
)
from lvisctl.data.transforms.base import make_boxes


def make_sample(h, w, shapes, labels=None, neg=(), not_exhaustive=()):
    """A sample with masks drawn from ``("rect", x1, y1, x2, y2)`` / ``("disk", cx, cy, r)`` shapes."""
    masks = torch.zeros((len(shapes), h, w), dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for i, shape in enumerate(shapes):
        if shape[0] == "rect":
            _, x1, y1, x2, y2 = shape
            masks[i, y1:y2, x1:x2] = 1
        else:
            _, cx, cy, r = shape
            masks[i] = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).to(torch.uint8)
    image = torch.randint(
        0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h * w)
    )
    return {
        "image": tv_tensors.Image(image),
        "masks": tv_tensors.Mask(masks),
        "boxes": make_boxes(tight_boxes(masks), h, w),
        "labels": torch.tensor(labels or list(range(1, len(shapes) + 1)), dtype=torch.int64),
        "ignore_boxes": make_boxes(torch.zeros((0, 4)), h, w),
        "neg_labels": torch.tensor(sorted(neg), dtype=torch.int64),
        "not_exhaustive_labels": torch.tensor(sorted(not_exhaustive), dtype=torch.int64),
        "image_id": 1,
        "loss_weight": 1.0,
    }


def same(a, b) -> bool:
    """Equal values of equal types (float32 arrays stay float32, lists stay lists, key order kept)."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
