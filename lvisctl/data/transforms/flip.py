"""Random horizontal flip (p = 0.5 in the standard Mask R-CNN recipe)."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

from lvisctl.data.transforms.base import Sample, SampleSource, finish_geometry, uniform


def hflip_sample(sample: Sample, *, box_from_mask: bool = True) -> Sample:
    image = F.horizontal_flip(sample["image"])
    masks = F.horizontal_flip(sample["masks"])
    boxes = F.horizontal_flip(sample["boxes"])
    ignore = F.horizontal_flip(sample["ignore_boxes"])
    return finish_geometry(sample, image, masks, boxes, ignore, box_from_mask=box_from_mask)


class RandomHorizontalFlip:
    def __init__(self, prob: float = 0.5, *, box_from_mask: bool = True):
        self.prob = float(prob)
        self.box_from_mask = box_from_mask

    def __call__(self, sample: Sample, rng: torch.Generator, source: SampleSource | None = None) -> Sample:
        if uniform(rng) >= self.prob:
            return sample
        return hflip_sample(sample, box_from_mask=self.box_from_mask)
