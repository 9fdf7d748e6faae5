"""Mask proposal assignment (Eq. 1): box rules, area term, training areas and the test-time two passes."""

import pytest
import torch

from lvisctl.modeling.mask_assign import (
    area_levels,
    assign_mask_levels,
    box_areas,
    box_levels,
    mask_areas_in_boxes,
    two_pass_mask_predict,
)


def _sq(sides):
    return torch.tensor([float(s) ** 2 for s in sides])


def test_log2_box_rule_matches_fpn_mapping():
    # floor(log2(side / 56)) clamped to [0, 3]: 56 and 111 -> P2, 112 -> P3, 224 -> P4, 448 and up -> P5
    sides = [10, 56, 111, 112, 223, 224, 447, 448, 2000]
    assert box_levels(_sq(sides)).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_paper_box_rule_is_the_printed_formula():
    areas = torch.tensor([0.0, 3135.0, 3136.0, 6272.0, 9408.0, 1e6])
    assert box_levels(areas, box_rule="paper").tolist() == [0, 0, 1, 2, 3, 3]
    with pytest.raises(ValueError):
        box_levels(areas, box_rule="sqrt")


def test_area_term():
    bbox = torch.full((6,), 1000.0)
    mask = torch.tensor([0.0, 249.0, 250.0, 500.0, 750.0, 1000.0])
    assert area_levels(bbox, mask).tolist() == [0, 0, 1, 2, 3, 3]


def test_eq1_takes_the_minimum():
    side = 448.0  # box level 3
    bbox = torch.full((5,), side * side)
    ratios = torch.tensor([0.1, 0.25, 0.5, 0.75, 1.0])
    assert assign_mask_levels(bbox, ratios * bbox).tolist() == [0, 1, 2, 3, 3]
    # a small box keeps its box level even with a full mask; the area term only lowers levels
    small = _sq([112, 112, 60])  # box levels 1, 1, 0
    assert assign_mask_levels(small, small * torch.tensor([0.9, 0.2, 1.0])).tolist() == [1, 0, 0]
    # with the printed rule a 100 x 100 box is already level 3
    assert assign_mask_levels(_sq([100]), _sq([100]) * 0.6, box_rule="paper").tolist() == [2]
    assert assign_mask_levels(bbox, ratios * bbox).dtype == torch.long


def test_box_areas():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [5.0, 5.0, 4.0, 9.0]])
    assert box_areas(boxes).tolist() == [50.0, 0.0]


def test_mask_areas_in_boxes_counts_pixels_inside():
    masks = torch.zeros(2, 10, 10, dtype=torch.uint8)
    masks[0, 2:6, 2:6] = 1  # 4 x 4 square: 16 px
    masks[1, :, 0] = 1  # left column: 10 px
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # whole image, gt 0 -> 16
            [4.0, 4.0, 10.0, 10.0],  # quarter of the square -> 2 x 2 = 4
            [0.0, 0.0, 10.0, 10.0],  # gt 1 -> 10
            [1.0, 3.0, 10.0, 7.0],  # gt 1, box misses column 0 -> 0
            [0.0, 3.0, 3.0, 7.4],  # gt 1, rows 3..6 (7.4 rounds to 7) -> 4
        ]
    )
    gt_index = torch.tensor([0, 0, 1, 1, 1])
    assert mask_areas_in_boxes(masks, boxes, gt_index).tolist() == [16.0, 4.0, 10.0, 0.0, 4.0]
    assert mask_areas_in_boxes(masks, boxes[:0], gt_index[:0]).shape == (0,)


class _FakeMaskHead:
    """Returns a fixed foreground fraction per RoI, so S_mask estimates are known; records its calls."""

    def __init__(self, fractions):
        self.fractions = fractions
        self.calls = []

    def __call__(self, rois, levels):
        self.calls.append((rois.tolist(), levels.tolist()))
        out = torch.zeros(rois.shape[0], 4, 4)
        for row, (roi, level) in enumerate(zip(rois.tolist(), levels.tolist(), strict=True)):
            flat = out[row].view(-1)
            flat[: int(self.fractions[roi] * 16)] = 0.9
            flat[-1] = 0.1 * level  # marks which pass/level produced the row (stays below 0.5)
        return out


def test_two_pass_reruns_only_changed_rois():
    areas = _sq([448, 448, 60])  # box levels 3, 3, 0
    head = _FakeMaskHead([0.25, 1.0, 0.25])  # estimated S_mask / S_bbox
    masks, levels = two_pass_mask_predict(head, areas)
    # RoI 0: min(3, floor(0.25 / 0.25)) = 1 -> rerun; RoI 1 stays at 3; RoI 2 stays at 0
    assert levels.tolist() == [1, 3, 0]
    assert head.calls == [([0, 1, 2], [3, 3, 0]), ([0], [1])]
    assert masks[:, -1, -1].tolist() == pytest.approx([0.1, 0.3, 0.0])


def test_two_pass_merges_tuple_outputs_and_single_pass_switch():
    areas = _sq([448, 448])
    head = _FakeMaskHead([0.1, 0.8])

    def with_extra(rois, levels):
        return head(rois, levels), levels.float() * 10

    (masks, extra), levels = two_pass_mask_predict(with_extra, areas)
    assert levels.tolist() == [0, 3]
    assert extra.tolist() == [0.0, 30.0]
    head.calls.clear()
    _, levels = two_pass_mask_predict(head, areas, single_pass=True)
    assert levels.tolist() == [3, 3] and len(head.calls) == 1


def test_two_pass_with_no_rois():
    head = _FakeMaskHead([])
    masks, levels = two_pass_mask_predict(head, torch.zeros(0))
    assert masks.shape == (0, 4, 4) and levels.shape == (0,)
