"""Fixed AP (Dave et al. 2021): per-category top-K, no per-image cap; hand-computed cases."""

from __future__ import annotations

import pytest

from lvisctl.evaluation.fixed_ap import FIXED_KEYS, fixed_ap, top_k_per_category
from lvisctl.evaluation.lvis_metrics import evaluate_lvis, load_ground_truth, load_results_for_eval
from tests.helpers.lvis_reference import (
    det_rect,
    gt_rect,
    lvis_category,
    lvis_dataset,
    lvis_image,
    write_json,
)


def test_top_k_per_category_keeps_best_scores_in_file_order():
    dets = [
        {"category_id": 1, "score": 0.5},
        {"category_id": 1, "score": 0.9},
        {"category_id": 2, "score": 0.1},
        {"category_id": 1, "score": 0.7},
        {"category_id": 1, "score": 0.9},
    ]
    kept = top_k_per_category(dets, k=2)
    assert kept == [dets[1], dets[2], dets[4]]  # cat 1: the two 0.9s; cat 2: its only detection
    assert top_k_per_category([], k=3) == []


def _gt(tmp_path, images, anns):
    path = write_json(
        tmp_path / "gt.json", lvis_dataset(images, anns, [lvis_category(1, "f"), lvis_category(2, "c")])
    )
    return path, load_ground_truth(path)


def test_fixed_ap_ignores_the_per_image_cap(tmp_path):
    """300 higher-scoring detections (negative category 2) push the exact TP of category 1 to rank 301.

    Standard LVIS AP drops it: AP = 0. Fixed AP keeps it (1 detection <= K for category 1): AP = 1.
    """
    gt_path, gt = _gt(tmp_path, [lvis_image(1, neg=[2])], [gt_rect(1, 1, 1, 10, 10, 20, 20)])
    dets = [det_rect(1, 2, 0.9, 0, 0, 5, 5) for _ in range(300)] + [det_rect(1, 1, 0.1, 10, 10, 20, 20)]
    res_path = write_json(tmp_path / "res.json", dets)
    standard = evaluate_lvis(load_results_for_eval(res_path, gt), gt, ("segm",))
    assert standard["segm"].metrics["AP"] == 0.0
    fixed = fixed_ap(gt, dets, ("segm", "bbox"))
    assert set(fixed["segm"].metrics) == set(FIXED_KEYS)
    assert fixed["segm"].metrics["AP"] == pytest.approx(1.0)
    assert fixed["bbox"].metrics["AP"] == pytest.approx(1.0)


def test_fixed_ap_top_k_limits_each_category(tmp_path):
    """Two GTs of category 1, both detected exactly (0.9, 0.8). K = 1 keeps only the first: recall
    tops out at 0.5, precision 1 up to it: 51 of 101 recall points -> AP = 51/101. K = 2: AP = 1."""
    gt_path, gt = _gt(
        tmp_path,
        [lvis_image(1), lvis_image(2)],
        [gt_rect(1, 1, 1, 10, 10, 20, 20), gt_rect(2, 2, 1, 5, 5, 30, 30)],
    )
    dets = [det_rect(1, 1, 0.9, 10, 10, 20, 20), det_rect(2, 1, 0.8, 5, 5, 30, 30)]
    assert fixed_ap(gt, dets, ("segm",), k=1)["segm"].metrics["AP"] == pytest.approx(51 / 101)
    assert fixed_ap(gt, dets, ("segm",), k=2)["segm"].metrics["AP"] == pytest.approx(1.0)
