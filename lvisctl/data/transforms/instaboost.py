"""InstaBoost (Fang et al., ICCV 2019, "InstaBoost: Boosting Instance Segmentation via Probability Map
Guided Copy-Pasting"): cut the instances out, fill the holes from the surrounding background, paste them
back after a small random similarity transform. Table 2's dagger rows train with it.

Follows the authors' package (GothicAi/InstaBoost-pypi, ``instaboost/get_instance_group.py``,
``single_image_process.py``, ``InstaBoost.py``) with the defaults mmdet's InstaBoost configs use
(``action_prob=(1, 0, 0)``, ``scale=(0.8, 1.2)``, ``dx = dy = 15``, ``theta=(-1, 1)``, ``color_prob=0.5``,
``aug_ratio=0.5``, ``heatmap_flag=False``):

* with probability ``prob`` per sample (mmdet's ``aug_ratio``); otherwise the sample is unchanged;
* groups (``extract``'s ``dfs``): instances whose boxes overlap, directly or through others, form one
  group that moves as one piece with one transform, about the centre of the group's box (a person on a
  horse stays on the horse);
* per group (``__random_transform``): scale ``s`` uniform in ``scale``; integer shifts uniform in
  ``[-floor(w / shift), floor(w / shift)]`` and the same with the height (w, h: the group box); an integer
  angle in degrees uniform in ``[-max_angle, max_angle]`` ({-1, 0, 1} by default);
* border rule (``get_restriction``): a group whose box is within 10 px of a border gets ``s >= 1``, a
  shift only towards that border (or none) and no rotation, so an object the image cuts off stays cut
  off at the border and never shows its cut edge inside the image;
* background: the pixels of all instances are filled from the surrounding pixels by push-pull
  interpolation (the package calls OpenCV's ``inpaint``); groups are pasted in the package's order (that
  of their first instance), a later group occluding the earlier ones (their masks lose those pixels;
  the package leaves overlapping masks as they are: lvisctl's choice, so no pixel has two instances);
* colour jitter (``randomColor``) with probability ``color_prob``: saturation x[0, 3], brightness x[1, 2],
  contrast x[1, 2], sharpness x[0, 3], each factor a multiple of 0.1 drawn uniformly, in that order;
* boxes are re-derived from the new masks; instances whose mask vanished are dropped. If every instance
  vanished the original sample is returned: InstaBoost never yields an image without instances.

Not implemented: the appearance-consistency heatmap (``heatmap_flag``, off in mmdet's configs) and the
alpha matting of the group's edge (``global_matting`` + ``guided_filter``; the mask is pasted hard).
Why not the package: ``instaboostfast`` 0.1.2 is a source-only distribution (the project installs wheels
only) that pulls OpenCV, scikit-image and matplotlib, and draws from the global NumPy RNG, which would
break the pipeline's (seed, epoch, position) reproducibility.

Config (``augment.instaboost``): ``prob`` (0 = off), ``scale``, ``shift``, ``max_angle``, ``color_prob``. It
runs first in the pipeline (on the source image, as mmdet does), before Mosaic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F_nn
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from lvisctl.data.transforms.base import (
    Sample,
    SampleSource,
    boxes_and_nonempty,
    finish_geometry,
    randint,
    uniform,
)


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


BORDER = 10  # px: a group this close to a border is "cut off" there (get_restriction)


def instance_groups(boxes: torch.Tensor) -> list[list[int]]:
    """Instances whose boxes overlap (strictly), directly or through others, in the package's order: a
    group per not yet grouped instance, in index order (``get_instance_group.extract``'s ``dfs``)."""
    b = boxes.tolist()
    group_of = [-1] * len(b)
    groups: list[list[int]] = []
    for start in range(len(b)):
        if group_of[start] >= 0:
            continue
        group_of[start] = len(groups)
        members, stack = [start], [start]
        while stack:
            i = stack.pop()
            for j in range(len(b)):
                if group_of[j] < 0 and _overlap(b[i], b[j]):
                    group_of[j] = len(groups)
                    members.append(j)
                    stack.append(j)
        groups.append(members)
    return groups


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def group_box(boxes: torch.Tensor, group: Sequence[int]) -> torch.Tensor:
    g = boxes[list(group)]
    return torch.stack([g[:, 0].min(), g[:, 1].min(), g[:, 2].max(), g[:, 3].max()])


def paste_instances(
    sample: Sample,
    moves: Sequence[tuple[float, float, float, float]],
    order: Sequence[int],
    groups: Sequence[Sequence[int]] | None = None,
) -> Sample:
    """Cut all instances out, fill the background, paste group ``g`` moved by ``moves[g]`` = (scale, angle
    in degrees, dx, dy) about its box centre, in ``order`` (later ones on top); boxes from masks.
    ``groups`` default: every instance its own group."""
    image = sample["image"].as_subclass(torch.Tensor)
    masks = sample["masks"].as_subclass(torch.Tensor)
    h, w = image.shape[-2:]
    boxes, _nonempty = boxes_and_nonempty(masks)
    groups = [[i] for i in range(masks.shape[0])] if groups is None else groups
    canvas = fill_holes(
        image, masks.amax(dim=0) > 0 if masks.shape[0] else torch.zeros((h, w), dtype=torch.bool)
    )
    new_masks = torch.zeros_like(masks)
    for g in order:
        members = list(groups[g])
        box = group_box(boxes, members)
        scale, angle, dx, dy = moves[g]
        bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
        if bw <= 0 or bh <= 0:
            continue
        # everything the similarity transform can reach from the box: half diagonal x scale + shift
        reach = 0.5 * math.hypot(bw, bh) * max(scale, 1.0) + max(abs(dx), abs(dy)) + 2
        x1, y1, x2, y2 = _window(box, reach, h, w)
        centre = [float(box[0] + box[2]) / 2 - x1, float(box[1] + box[3]) / 2 - y1]
        args = {"angle": angle, "translate": [dx, dy], "scale": scale, "shear": [0.0, 0.0], "center": centre}
        crop_masks = masks[members, y1:y2, x1:x2]
        union = crop_masks.amax(dim=0, keepdim=True)
        moved_masks = F.affine(crop_masks, interpolation=InterpolationMode.NEAREST, **args) > 0
        moved_union = F.affine(union, interpolation=InterpolationMode.NEAREST, **args)[0] > 0
        moved_img = F.affine(image[:, y1:y2, x1:x2] * union, interpolation=InterpolationMode.BILINEAR, **args)
        region = canvas[:, y1:y2, x1:x2]
        region[:, moved_union] = moved_img[:, moved_union]
        new_masks[:, y1:y2, x1:x2][:, moved_union] = 0  # occludes the groups pasted before
        new_masks[members, y1:y2, x1:x2] = moved_masks.to(new_masks.dtype)
    return finish_geometry(
        sample, canvas, new_masks, sample["boxes"], sample["ignore_boxes"], box_from_mask=True
    )


def draw_color_factors(rng: torch.Generator) -> tuple[float, float, float, float]:
    """``randomColor``'s factors: saturation, brightness, contrast, sharpness (np.random.randint(0, 31) /
    10 etc.: multiples of 0.1 in [0, 3], [1, 2], [1, 2], [0, 3])."""
    return (
        randint(rng, 0, 30) / 10,
        randint(rng, 10, 20) / 10,
        randint(rng, 10, 20) / 10,
        randint(rng, 0, 30) / 10,
    )


def jitter_colors(image: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    """PIL ``ImageEnhance`` Color, Brightness, Contrast, Sharpness in that order (torchvision's ports)."""
    saturation, brightness, contrast, sharpness = factors
    out = F.adjust_saturation(image, saturation)
    out = F.adjust_brightness(out, brightness)
    out = F.adjust_contrast(out, contrast)
    return F.adjust_sharpness(out, sharpness)


class InstaBoost:
    """With probability ``prob``, re-paste every instance group with a random similarity transform."""

    def __init__(
        self,
        prob: float = 0.5,
        scale: Sequence[float] = (0.8, 1.2),
        shift: float = 15.0,
        max_angle: float = 1.0,
        color_prob: float = 0.5,
    ) -> None:
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(
                f"augment.instaboost.scale: need [min, max] with 0 < min <= max, got {list(scale)}"
            )
        if shift <= 0:
            raise ValueError(f"augment.instaboost.shift: must be > 0, got {shift}")
        self.prob, self.scale = float(prob), (float(scale[0]), float(scale[1]))
        self.shift, self.max_angle = float(shift), int(math.floor(max_angle))  # randint over whole degrees
        self.color_prob = float(color_prob)

    def draw_move(
        self, rng: torch.Generator, box: Sequence[float], size: tuple[int, int]
    ) -> tuple[float, float, float, float]:
        """One group's (scale, angle, dx, dy) as ``__random_transform`` with ``get_restriction``."""
        h, w = size
        bw, bh = box[2] - box[0], box[3] - box[1]
        max_x, max_y = int(bw // self.shift), int(bh // self.shift)
        scale = uniform(rng, *self.scale)
        dx, dy = randint(rng, -max_x, max_x), randint(rng, -max_y, max_y)
        angle = randint(rng, -self.max_angle, self.max_angle)
        left, up = box[0] < BORDER, box[1] < BORDER
        right, down = box[2] > w - BORDER, box[3] > h - BORDER
        if left or right or up or down:  # cut off by the border: keep it cut off there
            scale, angle = max(scale, 1.0), 0
        dx = min(dx, 0) if left else dx
        dx = max(dx, 0) if right else dx
        dy = min(dy, 0) if up else dy
        dy = max(dy, 0) if down else dy
        return scale, float(angle), float(dx), float(dy)

    def __call__(self, sample: Sample, rng: torch.Generator, source: SampleSource | None = None) -> Sample:
        apply = uniform(rng) < self.prob
        masks = sample["masks"].as_subclass(torch.Tensor)
        if not apply or masks.shape[0] == 0:
            return sample
        boxes, _ = boxes_and_nonempty(masks)
        groups = instance_groups(boxes)
        size = (int(masks.shape[-2]), int(masks.shape[-1]))
        moves = [self.draw_move(rng, group_box(boxes, g).tolist(), size) for g in groups]
        out = paste_instances(sample, moves, range(len(groups)), groups)
        if out["masks"].shape[0] == 0:  # every instance vanished: keep the original image
            return sample
        if uniform(rng) < self.color_prob:
            image = out["image"].as_subclass(torch.Tensor)
            out["image"] = tv_tensors.Image(jitter_colors(image, draw_color_factors(rng)))
        return out
