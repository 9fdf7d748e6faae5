"""Random rotation (lvisTraveler's "rotate") with the "rotated box aligned with rotated mask" switch.

Rotating a box's corners and taking their bounding box (the usual rule, ``box_from_mask=False``) inflates
boxes: a disk's box rotated by 45 degrees grows by sqrt(2). lvisTraveler's trick recomputes the box from
the rotated mask, which stays tight.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from lvisctl.data.transforms.base import FILL_VALUE, Sample, SampleSource, finish_geometry, uniform


def rotate_sample(
    sample: Sample, angle: float, *, box_from_mask: bool = True, expand: bool = False
) -> Sample:
    """Rotate by ``angle`` degrees counter-clockwise about the image centre (torchvision convention)."""
    image = F.rotate(sample["image"], angle, InterpolationMode.BILINEAR, expand=expand, fill=[FILL_VALUE] * 3)
    masks = F.rotate(sample["masks"], angle, InterpolationMode.NEAREST, expand=expand, fill=[0])
    boxes = F.rotate(sample["boxes"], angle, expand=expand)
    ignore = F.rotate(sample["ignore_boxes"], angle, expand=expand)
    return finish_geometry(sample, image, masks, boxes, ignore, box_from_mask=box_from_mask)


class RandomRotate:
    """With probability ``prob``, rotate by an angle drawn uniformly from ``[-max_angle, max_angle]``."""

    def __init__(self, prob: float, max_angle: float, *, box_from_mask: bool = True, expand: bool = False):
        self.prob = float(prob)
        self.max_angle = float(max_angle)
        self.box_from_mask = box_from_mask
        self.expand = expand

    def __call__(self, sample: Sample, rng: torch.Generator, source: SampleSource | None = None) -> Sample:
        # Both draws always happen so the number of RNG calls does not depend on the outcome.
        apply = uniform(rng) < self.prob
        angle = uniform(rng, -self.max_angle, self.max_angle)
        if not apply or self.max_angle == 0:
            return sample
        return rotate_sample(sample, angle, box_from_mask=self.box_from_mask, expand=self.expand)
