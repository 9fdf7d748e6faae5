"""FPN level assignment of RoIs: the box rule (every branch) and mask proposal assignment (lvisTraveler,
LVIS Challenge 2020 report, Eq. 1). The one place where a RoI's pooling level is decided.

    level = min(box_level(S_bbox), floor(S_mask / (0.25 * S_bbox)), 3)      level 0 = P2 ... 3 = P5

A RoI with a large box but a thin mask (small S_mask / S_bbox) is pooled from a finer FPN level than its box
alone would pick, so the mask head sees the detail it needs. The area term sends ratios < 0.25 to P2,
[0.25, 0.5) to at most P3, [0.5, 0.75) to at most P4.

Box term. The report prints floor(S_bbox / 56^2), which is almost certainly a transcription of the usual
FPN RoI mapping with finest scale 56 (mmdet's ``SingleRoIExtractor.map_roi_levels``):
``box_level = clamp(floor(log2(sqrt(S_bbox) / 56 + 1e-6)), 0, 3)`` (``box_rule="log2"``, the default; it is
torchvision's ``LevelMapper`` with canonical scale 224 at P4, shifted to index 0 = P2). The printed formula
is kept as ``box_rule="paper"``: ``clamp(floor(S_bbox / 56^2), 0, 3)``.

Areas. In training S_bbox is the proposal's area and S_mask the area of its matched ground-truth mask inside
the proposal (``mask_areas_in_boxes``). At test time S_mask is unknown: ``two_pass_mask_predict`` predicts
the mask from the box-level features, estimates S_mask from that prediction (foreground fraction of the
M x M mask times S_bbox), reassigns with Eq. 1 and re-runs the mask head on the RoIs whose level changed.
Eq. 1 never picks a coarser level than the box rule, so the second pass only moves RoIs to finer levels.

How it plugs in: ``fpn_levels(boxes)`` is the box rule every RoI head uses for its box branch (FPN paper
Eq. 1, canonical 224 px box -> P4, as torchvision's ``LevelMapper``). The mask branch of every RoI head
type holds a ``MaskLevelAssigner``: ``train_levels(boxes, mask_areas)`` in training and ``predict(mask_fn,
boxes)`` at test time (``two_pass_mask_predict`` for Eq. 1). Config switch:
``model.mask_head.level_assign: box | eq1``; keys ``model.mask_head.eq1_box_rule: log2 | paper`` and
``model.mask_head.eq1_single_pass`` (false).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

FINEST_SCALE = 56.0  # sqrt(area) of a RoI mapped exactly to the P2/P3 border (mmdet finest_scale)
MAX_LEVEL = 3  # index of P5, the coarsest level RoIs are pooled from
BOX_RULES = ("log2", "paper")
LEVEL_ASSIGNS = ("box", "eq1")


def box_levels(bbox_areas: Tensor, box_rule: str = "log2", max_level: int = MAX_LEVEL) -> Tensor:
    """Box-scale FPN level of each RoI (0 = P2); see the module docstring for the two rules."""
    areas = bbox_areas.float().clamp_min(0.0)
    if box_rule == "log2":
        level = torch.floor(torch.log2(torch.sqrt(areas) / FINEST_SCALE + 1e-6))
    elif box_rule == "paper":
        level = torch.floor(areas / FINEST_SCALE**2)
    else:
        raise ValueError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
    return level.clamp(0, max_level).long()


def area_levels(bbox_areas: Tensor, mask_areas: Tensor, max_level: int = MAX_LEVEL) -> Tensor:
    """Area-ratio term of Eq. 1: ``floor(S_mask / (0.25 * S_bbox))`` clamped to [0, max_level]."""
    ratio = mask_areas.float() / (0.25 * bbox_areas.float().clamp_min(1e-6))
    # The tiny slack keeps exact multiples of 0.25 (e.g. a mask filling half the box) on the higher level
    # despite float rounding in the division.
    return torch.floor(ratio + 1e-6).clamp(0, max_level).long()


def assign_mask_levels(bbox_areas: Tensor, mask_areas: Tensor, box_rule: str = "log2") -> Tensor:
    """Eq. 1: ``min(box_level, floor(S_mask / (0.25 S_bbox)), 3)`` per RoI, as a LongTensor (0 = P2)."""
    if bbox_areas.shape != mask_areas.shape:
        raise ValueError(
            f"bbox_areas {tuple(bbox_areas.shape)} and mask_areas {tuple(mask_areas.shape)} differ"
        )
    return torch.minimum(box_levels(bbox_areas, box_rule), area_levels(bbox_areas, mask_areas))


def box_areas(boxes: Tensor) -> Tensor:
    """Areas of xyxy boxes (N x 4), as in mmdet's level mapping: (x2 - x1) * (y2 - y1)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def fpn_levels(boxes: Tensor) -> Tensor:
    """Box-rule level (0 = P2 .. 3 = P5) of xyxy boxes [N, 4]: the FPN rule with canonical 224 px at P4."""
    return box_levels(box_areas(boxes), "log2")


TABLE_BYTES = 64 * 2**20  # summed-area tables built at once: a few masks' worth, not all G at full size


def mask_areas_in_boxes(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor) -> Tensor:
    """S_mask for training: foreground pixels of ``gt_masks[gt_index[i]]`` inside ``boxes[i]``.

    ``gt_masks`` is G x H x W (one image's full-resolution masks), ``boxes`` N x 4 xyxy in the same pixel
    frame, ``gt_index`` the matched ground truth of each RoI. Box edges are rounded to the pixel grid.
    Summed-area tables (int32) of a few masks at a time, every RoI read from its own mask's table by
    indexing: no host sync (a loop over the matched masks cost 1 + G syncs per image on a GPU).
    """
    areas = torch.zeros(boxes.shape[0], dtype=torch.float32, device=boxes.device)
    if boxes.shape[0] == 0:
        return areas
    height, width = gt_masks.shape[-2:]
    dev = gt_masks.device
    x1 = boxes[:, 0].round().clamp(0, width).long().to(dev)
    x2 = boxes[:, 2].round().clamp(0, width).long().to(dev)
    y1 = boxes[:, 1].round().clamp(0, height).long().to(dev)
    y2 = boxes[:, 3].round().clamp(0, height).long().to(dev)
    gt_index = gt_index.to(dev).long()
    step = max(1, TABLE_BYTES // ((height + 1) * (width + 1) * 4))
    inside = torch.zeros(boxes.shape[0], dtype=torch.int32, device=dev)
    for start in range(0, gt_masks.shape[0], step):
        chunk = gt_masks[start : start + step] > 0
        table = torch.zeros((chunk.shape[0], height + 1, width + 1), dtype=torch.int32, device=dev)
        table[:, 1:, 1:] = chunk.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
        g = (gt_index - start).clamp(0, chunk.shape[0] - 1)
        part = table[g, y2, x2] - table[g, y1, x2] - table[g, y2, x1] + table[g, y1, x1]
        inside = torch.where((gt_index >= start) & (gt_index < start + chunk.shape[0]), part, inside)
    return inside.clamp_min(0).float().to(boxes.device)


MaskFn = Callable[[Tensor, Tensor], "Tensor | Sequence[Tensor]"]


def _first(output: Tensor | Sequence[Tensor]) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def two_pass_mask_predict(
    mask_fn: MaskFn,
    bbox_areas: Tensor,
    *,
    box_rule: str = "log2",
    threshold: float = 0.5,
    single_pass: bool = False,
) -> tuple[Tensor | tuple[Tensor, ...], Tensor]:
    """Test-time Eq. 1: predict, estimate S_mask, reassign, re-run the RoIs whose level changed.

    Args:
        mask_fn: ``mask_fn(roi_indices, levels)`` pools the RoIs ``roi_indices`` (LongTensor into the N RoIs)
            at ``levels`` and runs the mask head; it returns the mask probabilities of each RoI's class
            (n x M x M) or a tuple whose first element they are (other elements, e.g. mask-IoU predictions
            or boundary maps, only need n rows and are merged the same way).
        bbox_areas: N detection box areas (S_bbox).
        box_rule: box term of Eq. 1 (``"log2"`` or ``"paper"``).
        threshold: probability above which a mask pixel counts towards the estimated S_mask.
        single_pass: only the box-level pass (S_mask is not estimated; the Eq. 1 area term is skipped).

    Returns the merged outputs (same structure as ``mask_fn``'s) and the final level of each RoI.
    """
    levels = box_levels(bbox_areas, box_rule)
    all_rois = torch.arange(bbox_areas.shape[0], device=bbox_areas.device)
    output = mask_fn(all_rois, levels)
    if single_pass or bbox_areas.shape[0] == 0:
        return output, levels
    fg_fraction = (_first(output).flatten(1) > threshold).float().mean(dim=1)
    new_levels = assign_mask_levels(bbox_areas, fg_fraction * bbox_areas.float(), box_rule)
    changed = (new_levels != levels).nonzero(as_tuple=True)[0]
    if changed.numel() == 0:
        return output, levels
    rerun = mask_fn(changed, new_levels[changed])
    if isinstance(output, Tensor):
        merged = output.clone()
        merged[changed] = rerun
        return merged, new_levels
    merged_parts = []
    for part, new_part in zip(output, rerun, strict=True):
        part = part.clone()
        part[changed] = new_part
        merged_parts.append(part)
    return tuple(merged_parts), new_levels


class MaskLevelAssigner:
    """The mask branch's level rule: ``box`` (FPN rule) or ``eq1`` (paper Eq. 1), training and test."""

    def __init__(self, mode: str = "box", box_rule: str = "log2", single_pass: bool = False) -> None:
        if mode not in LEVEL_ASSIGNS:
            raise ValueError(f"mask level assignment must be one of {LEVEL_ASSIGNS}, got {mode!r}")
        if box_rule not in BOX_RULES:
            raise ValueError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
        self.mode, self.box_rule, self.single_pass = mode, box_rule, single_pass

    def train_levels(self, boxes: Tensor, mask_areas: Tensor | None) -> Tensor:
        """Levels of training RoIs from their boxes and their matched GT mask areas (S_mask)."""
        if self.mode == "box":
            return fpn_levels(boxes)
        if mask_areas is None:
            return box_levels(box_areas(boxes), self.box_rule)
        return assign_mask_levels(box_areas(boxes), mask_areas, self.box_rule)

    def predict(self, mask_fn: MaskFn, boxes: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Run ``mask_fn(roi_indices, levels)`` over all RoIs at test time (two passes for Eq. 1)."""
        if self.mode == "eq1":
            out, _levels = two_pass_mask_predict(
                mask_fn, box_areas(boxes), box_rule=self.box_rule, single_pass=self.single_pass
            )
            return out
        return mask_fn(torch.arange(boxes.shape[0], device=boxes.device), fpn_levels(boxes))
