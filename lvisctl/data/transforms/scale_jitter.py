"""Scale jitter / multi-scale training: pick the short side per sample, cap the long side (the model does
not resize; scales are chosen here).

Short side from a list (``train_scales``, e.g. 640..800) or, for multi-scale training, uniformly from an
integer range (lvisTraveler's 400-1400); the long side is capped at ``max_size`` (detectron2's
ResizeShortestEdge rule, including its rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from lvisctl.data.transforms.base import Sample, SampleSource, finish_geometry, image_size, randint


def short_side_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """Output ``(height, width)`` with the short side ``short`` and the long side at most ``max_size``."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_sample(sample: Sample, size: tuple[int, int], *, box_from_mask: bool = True) -> Sample:
    """Resize to ``size = (height, width)``: bilinear (antialiased) image, nearest masks, scaled boxes."""
    size = [int(size[0]), int(size[1])]
    image = F.resize(sample["image"], size, InterpolationMode.BILINEAR, antialias=True)
    masks = F.resize(sample["masks"], size, InterpolationMode.NEAREST_EXACT)
    boxes = F.resize(sample["boxes"], size)
    ignore = F.resize(sample["ignore_boxes"], size)
    return finish_geometry(sample, image, masks, boxes, ignore, box_from_mask=box_from_mask)


class ScaleJitter:
    """Resize each sample so its short side is drawn from ``scales`` (a list) or ``scale_range`` (lo, hi)."""

    def __init__(
        self,
        max_size: int,
        *,
        scales: Sequence[int] | None = None,
        scale_range: Sequence[int] | None = None,
        box_from_mask: bool = True,
    ):
        if (scales is None) == (scale_range is None):
            raise ValueError("give exactly one of scales (a list) or scale_range (lo, hi)")
        if scales is not None and len(scales) == 0:
            raise ValueError("scales must not be empty")
        if scale_range is not None and (len(scale_range) != 2 or scale_range[0] > scale_range[1]):
            raise ValueError(f"scale_range must be [lo, hi] with lo <= hi, got {scale_range}")
        self.scales = [int(s) for s in scales] if scales is not None else None
        self.scale_range = (int(scale_range[0]), int(scale_range[1])) if scale_range is not None else None
        self.max_size = int(max_size)
        self.box_from_mask = box_from_mask

    def pick_short_side(self, rng: torch.Generator) -> int:
        if self.scales is not None:
            return self.scales[randint(rng, 0, len(self.scales) - 1)]
        return randint(rng, *self.scale_range)

    def __call__(self, sample: Sample, rng: torch.Generator, source: SampleSource | None = None) -> Sample:
        h, w = image_size(sample)
        size = short_side_size(h, w, self.pick_short_side(rng), self.max_size)
        if size == (h, w):
            return sample
        return resize_sample(sample, size, box_from_mask=self.box_from_mask)
