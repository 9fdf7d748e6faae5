"""Oracle-box mask analysis: hand-made cases with known IoU per bin."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lvisctl.analysis.mask_quality import (
    boundary_iou,
    gt_area_ratio,
    mask_iou,
    oracle_box_records,
    ratio_bin,
    summarize,
)
from lvisctl.data.categories import CategoryMap
from lvisctl.data.lvis import LvisData, ann_to_mask

H, W = 40, 40


def _poly(x0, y0, x1, y1):
    return [np.array([x0, y0, x1, y0, x1, y1, x0, y1], dtype=np.float32)]


def make_data() -> LvisData:
    """One 40x40 image: a solid 20x20 square (mask/box ratio 1, frequent) and a thin L of two 2-px
    strokes in a 20x20 box (ratio 0.19, rare)."""
    square = {
        "id": 1,
        "image_id": 1,
        "category_id": 5,
        "bbox": [0, 0, 20, 20],
        "area": 400.0,
        "segmentation": _poly(0, 0, 20, 20),
        "iscrowd": 0,
    }
    # an L: vertical stroke x 20..22, y 20..40 and horizontal stroke x 20..40, y 38..40
    ell = [np.array([20, 20, 22, 20, 22, 38, 40, 38, 40, 40, 20, 40], dtype=np.float32)]
    thin = {
        "id": 2,
        "image_id": 1,
        "category_id": 7,
        "bbox": [20, 20, 20, 20],
        "area": 76.0,
        "segmentation": ell,
        "iscrowd": 0,
    }
    cats = {5: {"id": 5, "name": "sq", "frequency": "f"}, 7: {"id": 7, "name": "ell", "frequency": "r"}}
    return LvisData(
        path=Path("gt.json"),
        image_root=Path("."),
        images={1: {"id": 1, "height": H, "width": W}},
        categories=cats,
        anns_by_image={1: [square, thin]},
    )


def test_ratio_bins_and_area_ratio():
    assert ratio_bin(0.1) == "<0.25"
    assert ratio_bin(0.25) == "0.25-0.5"
    assert ratio_bin(0.5) == ">=0.5"
    assert ratio_bin(1.0) == ">=0.5"
    assert gt_area_ratio({"bbox": [0, 0, 20, 20], "area": 76.0}) == pytest.approx(0.19)


def test_mask_iou_hand_computed():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True  # 20 px
    b[2:6, 0:5] = True  # 20 px, 10 shared
    assert mask_iou(a, b) == pytest.approx(10 / 30)
    assert mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_boundary_iou_identical_and_shifted():
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    assert boundary_iou(gt, gt) == 1.0
    shifted = np.roll(gt, 3, axis=1)
    assert boundary_iou(shifted, gt) < mask_iou(shifted, gt)  # the band punishes a shifted contour more


def test_oracle_records_per_bin_with_known_predictions():
    data = make_data()
    cmap = CategoryMap([5, 7])

    def predict(image_id, boxes, labels):
        # the square: predicted as its top half (IoU 0.5); the L: predicted as the whole box (76 / 400)
        assert labels.tolist() == [1, 2]
        out = torch.zeros((2, H, W), dtype=torch.bool)
        out[0, 0:10, 0:20] = True
        out[1, 20:40, 20:40] = True
        return out

    records, results = oracle_box_records(data, [1], cmap, predict)
    assert [r.ann_id for r in records] == [1, 2]
    assert records[0].mask_iou == pytest.approx(0.5)
    thin_area = ann_to_mask(data.anns_by_image[1][1], H, W).sum()
    assert records[1].mask_iou == pytest.approx(thin_area / 400)
    table = summarize(records)
    assert table["all"][">=0.5"]["count"] == 1 and table["all"][">=0.5"]["mask_iou"] == pytest.approx(0.5)
    assert table["r"]["<0.25"]["mask_iou"] == pytest.approx(thin_area / 400)
    assert table["f"]["<0.25"]["count"] == 0 and table["f"]["<0.25"]["mask_iou"] is None
    assert table["all"]["all"]["mask_iou"] == pytest.approx((0.5 + thin_area / 400) / 2)
    assert {r["score"] for r in results} == {1.0}
    assert [r["bbox"] for r in results] == [[0, 0, 20, 20], [20, 20, 20, 20]]


def test_gt_masks_as_predictions_give_iou_one():
    data = make_data()

    def predict_gt(image_id, boxes, labels):
        anns = data.anns_by_image[image_id]
        return torch.from_numpy(np.stack([ann_to_mask(a, H, W) for a in anns]).astype(bool))

    records, _ = oracle_box_records(data, [1], CategoryMap([5, 7]), predict_gt)
    assert [r.mask_iou for r in records] == [1.0, 1.0]
    assert [r.boundary_iou for r in records] == [1.0, 1.0]


def test_unknown_categories_are_skipped():
    records, results = oracle_box_records(
        make_data(), [1], CategoryMap([5]), lambda i, b, lab: torch.ones((len(b), H, W), dtype=torch.bool)
    )
    assert [r.category_id for r in records] == [5]
    assert len(results) == 1
