"""How often Eq. 1 sends a mask RoI to another FPN level than the box rule, on a data set's GT instances.

If the two rules agree on (almost) every instance, the paper's mask proposal assignment cannot change
anything at that image scale: this is the check behind the ``hm`` synthetic preset. Each ground-truth
instance is taken as a RoI with its GT box and GT mask area (the training-time S_bbox and S_mask),
after resizing the image by ``scale``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from lvisctl.modeling.mask_assign import assign_mask_levels, box_levels

LEVEL_NAMES = ("P2", "P3", "P4", "P5")


def level_assignments(
    annotations: Iterable[Mapping[str, Any]], scale: float = 1.0, box_rule: str = "log2"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(box-rule levels, Eq. 1 levels)`` of every annotation (0 = P2), images resized by ``scale``."""
    boxes, masks = [], []
    for ann in annotations:
        boxes.append(float(ann["bbox"][2]) * float(ann["bbox"][3]))
        masks.append(float(ann.get("area", 0.0)))
    s2 = float(scale) ** 2
    bbox_areas = torch.tensor(boxes, dtype=torch.float64) * s2
    mask_areas = torch.tensor(masks, dtype=torch.float64) * s2
    return box_levels(bbox_areas, box_rule), assign_mask_levels(bbox_areas, mask_areas, box_rule)


def level_disagreement(
    annotations: Iterable[Mapping[str, Any]], scale: float = 1.0, box_rule: str = "log2"
) -> dict[str, Any]:
    """The fraction of instances whose Eq. 1 level differs from the box rule's, and both histograms."""
    box_lv, eq1_lv = level_assignments(annotations, scale, box_rule)
    n = int(box_lv.numel())
    moved = int((box_lv != eq1_lv).sum())
    return {
        "instances": n,
        "moved": moved,
        "fraction_moved": moved / n if n else 0.0,
        "box_rule": {name: int((box_lv == i).sum()) for i, name in enumerate(LEVEL_NAMES)},
        "eq1": {name: int((eq1_lv == i).sum()) for i, name in enumerate(LEVEL_NAMES)},
        "scale": float(scale),
    }
