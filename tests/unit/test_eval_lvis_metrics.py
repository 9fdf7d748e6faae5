"""``lvisctl.evaluation.lvis_metrics`` against lvis-api 0.5.3 on hand-built federated edge cases."""

from __future__ import annotations

import copy
import math

import pytest

from lvisctl.evaluation.lvis_metrics import (
    METRIC_KEYS,
    box_minus_mask_gap,
    evaluate_lvis,
    load_ground_truth,
    load_results_for_eval,
)
from tests.helpers.eval_cases import CATS, edge_case_gt, edge_case_results, random_case
from tests.helpers.lvis_reference import (
    det_rect,
    gt_rect,
    lvis_api_metrics,
    lvis_dataset,
    lvis_image,
    without_bbox,
    write_json,
)

# Categories: 1 f, 2 c, 3 r, 4 f (no GT in the split), 5 c (never verified anywhere).


def ours(tmp_path, gt: dict, results: list[dict], iou_types=("segm", "bbox")):
    gt_path = write_json(tmp_path / "gt.json", gt)
    res_path = write_json(tmp_path / "res.json", results)
    ground = load_ground_truth(gt_path)
    out = evaluate_lvis(load_results_for_eval(res_path, ground), ground, iou_types)
    return gt_path, res_path, out


def assert_matches_lvis_api(gt_path, res_path, out, iou_types=("segm", "bbox")) -> None:
    for t in iou_types:
        ref = lvis_api_metrics(gt_path, res_path, t)
        assert set(ref) == set(METRIC_KEYS)
        for key in METRIC_KEYS:
            assert out[t].metrics[key] == pytest.approx(ref[key], abs=1e-6), (t, key)


@pytest.mark.parametrize("with_bbox", [True, False])
def test_edge_cases_match_lvis_api(tmp_path, with_bbox):
    results = edge_case_results()
    if not with_bbox:
        results = without_bbox(results)
    gt_path, res_path, out = ours(tmp_path, edge_case_gt(), results)
    assert_matches_lvis_api(gt_path, res_path, out)
    # Category 4 has no GT anywhere and 5 was never verified: no AP for either.
    assert math.isnan(out["segm"].per_category_ap[4]) and math.isnan(out["segm"].per_category_ap[5])


def test_bbox_field_moves_mask_area_ranges(tmp_path):
    """lvis-api takes a segm result's area from its bbox: a 4x4 mask in a 120x120 box is not 'small'.

    GT: one 20x20 (small) object. A: exact TP at score 0.5. B: unmatched 4x4 mask at score 0.9.
    With B's box area (14400) B falls outside 'small' and is ignored there: APs = 1. With mask areas
    (16 px) B is a small false positive ranked first: precision 1/2 at recall 1, APs = 0.5.
    """
    gt = lvis_dataset([lvis_image(1, 128, 128)], [gt_rect(1, 1, 1, 10, 10, 20, 20)], CATS[:1])
    a = det_rect(1, 1, 0.5, 10, 10, 20, 20, 128, 128)
    b = det_rect(1, 1, 0.9, 100, 100, 4, 4, 128, 128)
    b["bbox"] = [0.0, 0.0, 120.0, 120.0]
    gt_path, res_path, with_box = ours(tmp_path, gt, [a, b], ("segm",))
    assert with_box["segm"].metrics["APs"] == pytest.approx(1.0)
    assert_matches_lvis_api(gt_path, res_path, with_box, ("segm",))
    gt_path, res_path, mask_area = ours(tmp_path, gt, without_bbox([a, b]), ("segm",))
    assert mask_area["segm"].metrics["APs"] == pytest.approx(0.5)
    assert_matches_lvis_api(gt_path, res_path, mask_area, ("segm",))


def test_hand_computed_ap(tmp_path):
    """One GT; a negative-category FP and an unverified-category det around it.

    cat 1: TP (score 0.6) exact -> AP 1. cat 2 (negative on image 1, GT on image 2): FP at 0.9, TP at
    0.5 -> precision 1/2 at recall 1 -> AP 0.5 at every IoU threshold. Category 3 (unverified) is ignored.
    Mean over the two categories: 0.75; APf = 1 (cat 1), APc = 0.5 (cat 2), APr = -1 (cat 3 has no GT).
    """
    gt = lvis_dataset(
        [lvis_image(1, neg=[2]), lvis_image(2)],
        [gt_rect(1, 1, 1, 10, 10, 20, 20), gt_rect(2, 2, 2, 30, 30, 20, 20)],
        CATS[:3],
    )
    dets = [
        det_rect(1, 1, 0.6, 10, 10, 20, 20),
        det_rect(1, 2, 0.9, 10, 10, 20, 20),
        det_rect(1, 3, 0.95, 0, 0, 10, 10),
        det_rect(2, 2, 0.5, 30, 30, 20, 20),
    ]
    gt_path, res_path, out = ours(tmp_path, gt, dets)
    m = out["segm"].metrics
    assert m["AP"] == pytest.approx(0.75)
    assert m["APf"] == pytest.approx(1.0) and m["APc"] == pytest.approx(0.5) and m["APr"] == -1.0
    assert m["AR@300"] == pytest.approx(1.0)
    assert out["segm"].per_category_ap[2] == pytest.approx(0.5)
    assert box_minus_mask_gap(out) == pytest.approx(0.0)
    assert_matches_lvis_api(gt_path, res_path, out)


def test_cap_keeps_top_300_per_image(tmp_path):
    """A TP ranked 301st on its image is dropped (AP 0), as lvis-api's LVISResults does."""
    gt = lvis_dataset([lvis_image(1, neg=[2])], [gt_rect(1, 1, 1, 10, 10, 20, 20)], CATS[:2])
    dets = [det_rect(1, 2, 0.9, 0, 0, 5, 5) for _ in range(300)]  # tied scores: file order decides
    dets.append(det_rect(1, 1, 0.1, 10, 10, 20, 20))
    gt_path, res_path, out = ours(tmp_path, gt, dets)
    assert out["segm"].metrics["AP"] == 0.0
    assert_matches_lvis_api(gt_path, res_path, out)


def test_empty_results_score_zero(tmp_path):
    gt = lvis_dataset([lvis_image(1)], [gt_rect(1, 1, 1, 10, 10, 20, 20)], CATS[:1])
    _, _, out = ours(tmp_path, gt, [])
    assert out["segm"].metrics["AP"] == 0.0 and out["bbox"].metrics["AR@300"] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_random_case_matches_lvis_api(tmp_path, seed):
    gt, dets = random_case(seed, num_images=40)
    gt_path, res_path, out = ours(tmp_path, gt, dets)
    assert_matches_lvis_api(gt_path, res_path, out)
    gt_path, res_path, out = ours(tmp_path, gt, without_bbox(copy.deepcopy(dets)), ("segm",))
    assert_matches_lvis_api(gt_path, res_path, out, ("segm",))
