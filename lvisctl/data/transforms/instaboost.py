"""InstaBoost (Fang et al., ICCV 2019, "InstaBoost: Boosting Instance Segmentation via Probability Map
Guided Copy-Pasting"): cut every instance out, fill the holes from the surrounding background, paste each
instance back after a small random similarity transform. Table 2's dagger rows train with it.

What is implemented, following the authors' ``instaboostfast`` package with the defaults mmdet's InstaBoost
configs use (``action_prob=(1, 0, 0)``, ``scale=(0.8, 1.2)``, ``dx = dy = 15``, ``theta=(-1, 1)``,
``aug_ratio=0.5``, ``heatmap_flag=False``):

* with probability ``prob`` per sample; otherwise the sample is unchanged;
* background: the pixels of all instances are filled from the surrounding pixels by push-pull
  interpolation (``instaboostfast`` calls OpenCV's ``inpaint``);
* each instance, in the order of decreasing area (small ones end on top): scale ``s`` uniform in
  ``scale``, rotation uniform in ``[-max_angle, max_angle]`` degrees about its box centre, shift uniform up
  to +-width / ``shift`` and +-height / ``shift`` pixels; its pixels and mask are pasted, and they occlude
  the instances pasted before it (their masks lose those pixels);
* boxes are re-derived from the new masks (an occluded, moved instance has no other box); instances
  whose mask vanished (moved off the image, fully covered) are dropped. If every instance vanished the
  original sample is returned: InstaBoost never yields an image without instances.

Not implemented: the appearance-consistency heatmap (``heatmap_flag``, off in mmdet's configs, and
minutes per image in ``instaboostfast``) and its colour jitter (the pipeline has no colour transform).
Why not the package: ``instaboostfast`` 0.1.2 is a source-only distribution (the project installs wheels
only) that pulls OpenCV, scikit-image and matplotlib, and draws from the global NumPy RNG, which would
break the pipeline's (seed, epoch, position) reproducibility.

Config (``augment.instaboost``): ``prob`` (0 = off), ``scale``, ``shift``, ``max_angle``. It runs first in
the pipeline (on the source image, as mmdet does), before Mosaic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F_nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from lvisctl.data.transforms.base import Sample, SampleSource, boxes_and_nonempty, finish_geometry, uniform


def _push_pull(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fill the pixels of ``values`` [C, H, W] with ``weight`` [H, W] == 0 from the known ones: average
    the known pixels 2x2 down to a level without gaps ("pull"), then interpolate back up into the gaps
    ("push"). O(H W) in all."""
    if bool((weight > 0).all()) or min(weight.shape) <= 1:
        if bool((weight > 0).any()):
            mean = (values * weight).sum(dim=(1, 2)) / weight.sum()
            return torch.where(weight > 0, values, mean[:, None, None])
        return values
    w_down = F_nn.avg_pool2d(weight[None, None], 2, ceil_mode=True)[0, 0]
    v_down = F_nn.avg_pool2d((values * weight)[None], 2, ceil_mode=True)[0]
    coarse = torch.where(w_down > 0, v_down / w_down.clamp_min(1e-12), torch.zeros_like(v_down))
    filled = _push_pull(coarse, (w_down > 0).to(weight.dtype))
    up = F_nn.interpolate(filled[None], size=values.shape[-2:], mode="bilinear", align_corners=False)[0]
    return torch.where(weight > 0, values, up)


def fill_holes(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] image with the ``hole`` [H, W] pixels filled from the surrounding known pixels
    (push-pull interpolation; ``instaboostfast`` uses OpenCV's inpainting)."""
    if not bool(hole.any()):
        return image
    known = (~hole).to(torch.float32)
    if not bool(known.any()):  # the instances cover everything: nothing to fill from
        return image
    out = _push_pull(image.to(torch.float32), known)
    return out.round().clamp(0, 255).to(torch.uint8)


def _window(box: torch.Tensor, reach: float, h: int, w: int) -> tuple[int, int, int, int]:
    """Integer window ``x1, y1, x2, y2`` around ``box``'s centre that holds everything within ``reach``."""
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    x1, y1 = max(0, math.floor(cx - reach)), max(0, math.floor(cy - reach))
    x2, y2 = min(w, math.ceil(cx + reach)), min(h, math.ceil(cy + reach))
    return x1, y1, x2, y2


def paste_instances(
    sample: Sample, moves: Sequence[tuple[float, float, float, float]], order: Sequence[int]
) -> Sample:
    """Cut all instances out, fill the background, paste instance ``i`` moved by ``moves[i]`` = (scale,
    angle in degrees, dx, dy) about its box centre, in ``order`` (later ones on top); boxes from masks."""
    image = sample["image"].as_subclass(torch.Tensor)
    masks = sample["masks"].as_subclass(torch.Tensor)
    h, w = image.shape[-2:]
    boxes, _nonempty = boxes_and_nonempty(masks)
    canvas = fill_holes(
        image, masks.amax(dim=0) > 0 if masks.shape[0] else torch.zeros((h, w), dtype=torch.bool)
    )
    new_masks = torch.zeros_like(masks)
    for i in order:
        scale, angle, dx, dy = moves[i]
        bw, bh = float(boxes[i, 2] - boxes[i, 0]), float(boxes[i, 3] - boxes[i, 1])
        if bw <= 0 or bh <= 0:
            continue
        # everything the similarity transform can reach from the box: half diagonal x scale + shift
        reach = 0.5 * math.hypot(bw, bh) * max(scale, 1.0) + max(abs(dx), abs(dy)) + 2
        x1, y1, x2, y2 = _window(boxes[i], reach, h, w)
        centre = [float(boxes[i, 0] + boxes[i, 2]) / 2 - x1, float(boxes[i, 1] + boxes[i, 3]) / 2 - y1]
        crop_mask = masks[i : i + 1, y1:y2, x1:x2]
        crop_img = image[:, y1:y2, x1:x2] * crop_mask
        args = {"angle": angle, "translate": [dx, dy], "scale": scale, "shear": [0.0, 0.0], "center": centre}
        moved_mask = F.affine(crop_mask, interpolation=InterpolationMode.NEAREST, **args)[0] > 0
        moved_img = F.affine(crop_img, interpolation=InterpolationMode.BILINEAR, **args)
        region = canvas[:, y1:y2, x1:x2]
        region[:, moved_mask] = moved_img[:, moved_mask]
        new_masks[:, y1:y2, x1:x2][:, moved_mask] = 0  # occludes the instances pasted before
        new_masks[i, y1:y2, x1:x2] = moved_mask.to(new_masks.dtype)
    return finish_geometry(
        sample, canvas, new_masks, sample["boxes"], sample["ignore_boxes"], box_from_mask=True
    )


class InstaBoost:
    """With probability ``prob``, re-paste every instance with a random similarity transform."""

    def __init__(
        self,
        prob: float = 0.5,
        scale: Sequence[float] = (0.8, 1.2),
        shift: float = 15.0,
        max_angle: float = 1.0,
    ) -> None:
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(
                f"augment.instaboost.scale: need [min, max] with 0 < min <= max, got {list(scale)}"
            )
        if shift <= 0:
            raise ValueError(f"augment.instaboost.shift: must be > 0, got {shift}")
        self.prob, self.scale = float(prob), (float(scale[0]), float(scale[1]))
        self.shift, self.max_angle = float(shift), float(max_angle)

    def draw_moves(
        self, rng: torch.Generator, boxes: torch.Tensor
    ) -> list[tuple[float, float, float, float]]:
        """Per instance: (scale, angle, dx, dy); the shift range scales with the instance's box."""
        moves = []
        for box in boxes.tolist():
            bw, bh = box[2] - box[0], box[3] - box[1]
            moves.append(
                (
                    uniform(rng, *self.scale),
                    uniform(rng, -self.max_angle, self.max_angle),
                    uniform(rng, -bw / self.shift, bw / self.shift),
                    uniform(rng, -bh / self.shift, bh / self.shift),
                )
            )
        return moves

    def __call__(self, sample: Sample, rng: torch.Generator, source: SampleSource | None = None) -> Sample:
        apply = uniform(rng) < self.prob
        masks = sample["masks"].as_subclass(torch.Tensor)
        if not apply or masks.shape[0] == 0:
            return sample
        boxes, _ = boxes_and_nonempty(masks)
        moves = self.draw_moves(rng, boxes)
        areas = masks.flatten(1).sum(dim=1)
        order = torch.argsort(areas, descending=True, stable=True).tolist()
        out = paste_instances(sample, moves, order)
        if out["masks"].shape[0] == 0:  # every instance vanished: keep the original image
            return sample
        return out
