"""The training augmentation pipeline, built from the ``augment:`` config section.

Order: InstaBoost -> Mosaic -> rotate -> scale jitter -> horizontal flip (InstaBoost works on the source
image, as in mmdet). Rotation runs before resizing so it works on
the (usually smaller) source resolution; scale jitter comes last among the resizes because it sets the
final training scale (the model does not resize).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lvisctl.data.transforms.base import Sample, SampleSource, Transform
from lvisctl.data.transforms.flip import RandomHorizontalFlip
from lvisctl.data.transforms.instaboost import InstaBoost
from lvisctl.data.transforms.mosaic import Mosaic
from lvisctl.data.transforms.rotate import RandomRotate
from lvisctl.data.transforms.scale_jitter import ScaleJitter


class Compose:
    """Apply transforms in order, all drawing from the same per-sample generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: torch.Generator, source: SampleSource | None = None) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng, source)
        return sample

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]})"


def build_train_transforms(cfg: Mapping[str, Any], *, repeat_factors: np.ndarray | None = None) -> Compose:
    """Training transforms from ``cfg.augment``; ``repeat_factors`` weight Mosaic's extra images.

    With ``augment.mosaic.rfs_weighted`` true, Mosaic draws its 3 extra images proportionally to
    ``repeat_factors`` (pass the same factors the RFS sampler uses; ``None`` falls back to uniform).
    """
    aug = cfg["augment"]
    aligned = bool(aug["box_from_mask"])
    transforms: list[Transform] = []
    boost = aug.get("instaboost")
    if boost is not None and boost["prob"] > 0:
        transforms.append(
            InstaBoost(boost["prob"], boost["scale"], boost["shift"], boost["max_angle"], boost["color_prob"])
        )
    mosaic = aug["mosaic"]
    if mosaic["prob"] > 0:
        weights = repeat_factors if mosaic["rfs_weighted"] else None
        transforms.append(Mosaic(mosaic["prob"], mosaic["size"], weights=weights, box_from_mask=aligned))
    rotate = aug["rotate"]
    if rotate["prob"] > 0 and rotate["max_angle"] > 0:
        transforms.append(
            RandomRotate(rotate["prob"], rotate["max_angle"], box_from_mask=aligned, expand=rotate["expand"])
        )
    if aug["multi_scale"]:
        transforms.append(
            ScaleJitter(aug["max_size"], scale_range=aug["multi_scale_range"], box_from_mask=aligned)
        )
    else:
        transforms.append(ScaleJitter(aug["max_size"], scales=aug["train_scales"], box_from_mask=aligned))
    if aug["hflip_prob"] > 0:
        transforms.append(RandomHorizontalFlip(aug["hflip_prob"], box_from_mask=aligned))
    return Compose(transforms)
