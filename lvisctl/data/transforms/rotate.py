"""Random rotation (lvisTraveler's "rotate") with the "rotated box aligned with rotated mask" switch.

Rotating a box's corners and taking their bounding box (the usual rule, ``box_from_mask=False``) inflates
boxes: a disk's box rotated by 45 degrees grows by sqrt(2). lvisTraveler's trick recomputes the box from
the rotated mask, which stays tight.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from lvisctl.data.transforms.base import (
    FILL_VALUE,
    Sample,
    SampleSource,
    boxes_and_nonempty,
    finish_geometry,
    uniform,
)


def rotate_sample(
    sample: Sample, angle: float, *, box_from_mask: bool = True, expand: bool = False
) -> Sample:
    """Rotate by ``angle`` degrees counter-clockwise about the image centre (torchvision convention)."""
    image = F.rotate(sample["image"], angle, InterpolationMode.BILINEAR, expand=expand, fill=[FILL_VALUE] * 3)
    out_h, out_w = image.shape[-2:]
    masks = rotate_masks(sample["masks"].as_subclass(torch.Tensor), angle, out_h, out_w)
    boxes = F.rotate(sample["boxes"], angle, expand=expand)
    ignore = F.rotate(sample["ignore_boxes"], angle, expand=expand)
    return finish_geometry(sample, image, masks, boxes, ignore, box_from_mask=box_from_mask)


def rotate_masks(masks: torch.Tensor, angle: float, out_h: int, out_w: int) -> torch.Tensor:
    """Nearest-neighbour rotation of ``[N,H,W]`` masks into an ``out_h x out_w`` canvas, instance by instance.

    Same geometry as ``F.rotate`` (rotation about the image centres, output pixel centres mapped back to
    the nearest input pixel), but each instance only visits the output pixels its rotated box can reach:
    LVIS instances are mostly small, and rotating N full-size masks with ``grid_sample`` (float copies of
    all of them) dominated the pipeline's time.
    """
    n, h, w = masks.shape
    out = torch.zeros((n, out_h, out_w), dtype=torch.uint8)
    if n == 0:
        return out
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    boxes, nonempty = boxes_and_nonempty(masks)
    # Forward map of each box's corners (input pixel edges -> output pixel edges) gives its output window.
    xs = boxes[:, [0, 2, 2, 0]].double() - w / 2
    ys = boxes[:, [1, 1, 3, 3]].double() - h / 2
    fx = xs * cos + ys * sin + out_w / 2
    fy = -xs * sin + ys * cos + out_h / 2
    x1 = fx.amin(1).floor().sub(1).clamp(0, out_w).long().tolist()
    x2 = fx.amax(1).ceil().add(1).clamp(0, out_w).long().tolist()
    y1 = fy.amin(1).floor().sub(1).clamp(0, out_h).long().tolist()
    y2 = fy.amax(1).ceil().add(1).clamp(0, out_h).long().tolist()
    for i in range(n):
        if not nonempty[i] or x2[i] <= x1[i] or y2[i] <= y1[i]:
            continue
        # Output pixel centres relative to the output centre, mapped back to input pixel indices.
        ox = torch.arange(x1[i], x2[i], dtype=torch.float64)[None, :] + 0.5 - out_w / 2
        oy = torch.arange(y1[i], y2[i], dtype=torch.float64)[:, None] + 0.5 - out_h / 2
        ix = torch.round(ox * cos - oy * sin + w / 2 - 0.5).long()
        iy = torch.round(ox * sin + oy * cos + h / 2 - 0.5).long()
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        values = masks[i][iy.clamp(0, h - 1), ix.clamp(0, w - 1)]
        out[i, y1[i] : y2[i], x1[i] : x2[i]] = values * inside
    return out


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
