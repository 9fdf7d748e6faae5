import json

import pytest
import torch

from lvisctl.errors import LvisctlError
from lvisctl.inference.pseudo_label_records import pseudo_label_file
from lvisctl.inference.pseudo_labels import (
    Selector,
    select_missing_annotations,
    select_unlabeled_pseudo_labels,
)


def test_missing_annotations_keep_confident_boxes_that_do_not_touch_gt():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor(
        [
            [20.0, 20.0, 30.0, 30.0],  # no overlap, confident -> keep
            [5.0, 5.0, 15.0, 15.0],  # overlaps gt (IoU 25/175) -> drop
            [40.0, 40.0, 50.0, 50.0],  # no overlap but low score -> drop
            [10.0, 0.0, 20.0, 10.0],  # touches gt edge only: IoU 0 -> keep
        ]
    )
    scores = torch.tensor([0.9, 0.95, 0.3, 0.6])
    assert select_missing_annotations(boxes, scores, gt).tolist() == [0, 3]
    # a looser overlap rule keeps the 25/175 = 0.143 IoU box too
    assert select_missing_annotations(boxes, scores, gt, max_gt_iou=0.15).tolist() == [0, 1, 3]


def test_missing_annotations_without_gt_keeps_all_confident():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    assert select_missing_annotations(boxes, torch.tensor([0.7, 0.2]), torch.zeros(0, 4)).tolist() == [0]


def test_unlabeled_selection_sorted_thresholded_capped():
    scores = torch.tensor([0.6, 0.9, 0.1, 0.8])
    assert select_unlabeled_pseudo_labels(scores, score_thresh=0.5).tolist() == [1, 3, 0]
    assert select_unlabeled_pseudo_labels(scores, score_thresh=0.5, max_per_image=2).tolist() == [1, 3]


def test_pseudo_label_file_is_lvis_format():
    images = [{"id": 7, "width": 64, "height": 48, "coco_url": "x/train2017/7.jpg"}]
    recs = [{"image_id": 7, "category_id": 3, "bbox": [1, 2, 4, 5], "score": 0.8}]
    out = pseudo_label_file(images, recs, [{"id": 3, "name": "c", "frequency": "r"}], source="missing")
    assert out["images"][0]["neg_category_ids"] == []
    assert out["annotations"] == [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1.0, 2.0, 4.0, 5.0], "area": 20.0, "score": 0.8}
    ]


def test_pseudo_labels_from_predictions_missing_and_unlabeled():
    from lvisctl.inference.pseudo_labels import pseudo_labels_from_predictions

    images = {1: {"id": 1, "width": 50, "height": 50}, 2: {"id": 2, "width": 50, "height": 50}}
    seg = {"size": [50, 50], "counts": "abc"}
    preds = [
        {"image_id": 1, "category_id": 4, "bbox": [0, 0, 10, 10], "score": 0.9, "segmentation": seg},  # on gt
        {"image_id": 1, "category_id": 4, "bbox": [30, 30, 10, 10], "score": 0.8, "segmentation": seg},
        {"image_id": 2, "category_id": 5, "bbox": [5, 5, 5, 5], "score": 0.4, "segmentation": seg},
    ]
    gt = {1: [[0, 0, 10, 10]]}
    cats = [{"id": 4, "name": "a"}, {"id": 5, "name": "b"}]
    missing = pseudo_labels_from_predictions(preds, Selector("missing", 0.5, images, gt), cats)
    assert [(a["image_id"], a["bbox"]) for a in missing["annotations"]] == [(1, [30.0, 30.0, 10.0, 10.0])]
    # masks are kept: LVIS annotations need a segmentation (`data validate`, lvis-api)
    assert missing["annotations"][0]["segmentation"] == seg
    unl = pseudo_labels_from_predictions(preds, Selector("unlabeled", 0.3, images, {}), cats)
    assert [a["image_id"] for a in unl["annotations"]] == [1, 1, 2]
    assert unl["annotations"][0]["segmentation"] == seg
    assert [i["id"] for i in unl["images"]] == [1, 2]


def test_score_thresholds_global_and_per_group():
    from lvisctl.inference.pseudo_labels import ScoreThresholds

    assert ScoreThresholds.parse("0.3") == ScoreThresholds(0.3, 0.3, 0.3)
    assert ScoreThresholds.parse("r=0.3,c=0.4,f=0.5") == ScoreThresholds(0.3, 0.4, 0.5)
    both = ScoreThresholds.parse("0.6, r=0.2")
    assert both == ScoreThresholds(0.2, 0.6, 0.6) and str(both) == "r=0.2,c=0.6,f=0.6"
    cats = [{"id": 4, "frequency": "r"}, {"id": 5, "frequency": "f"}, {"id": 6}]
    assert both.by_category(cats) == {4: 0.2, 5: 0.6, 6: 0.6}  # unknown group: the strictest
    for bad in ("x=0.3", "r=1.5", "abc", "", "r=0.1,,q"):
        with pytest.raises(LvisctlError, match="--score-thresh"):
            ScoreThresholds.parse(bad)


def test_per_category_thresholds_in_both_modes():
    from lvisctl.inference.pseudo_labels import pseudo_labels_from_predictions

    images = {1: {"id": 1, "width": 50, "height": 50}}
    preds = [
        {"image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5], "score": 0.35},  # rare, thresh 0.3: keep
        {"image_id": 1, "category_id": 5, "bbox": [20, 20, 5, 5], "score": 0.45},  # frequent, 0.5: drop
        {"image_id": 1, "category_id": 5, "bbox": [30, 30, 5, 5], "score": 0.55},  # keep
    ]
    cats = [{"id": 4, "name": "a"}, {"id": 5, "name": "b"}]
    for mode in ("missing", "unlabeled"):
        out = pseudo_labels_from_predictions(preds, Selector(mode, {4: 0.3, 5: 0.5}, images, {}), cats)
        assert sorted(a["score"] for a in out["annotations"]) == [0.35, 0.55]


def test_missing_mode_follows_federated_labels():
    from lvisctl.inference.pseudo_labels import can_be_missing, pseudo_labels_from_predictions

    image = {"id": 1, "width": 50, "height": 50, "neg_category_ids": [7], "not_exhaustive_category_ids": [4]}
    assert can_be_missing(image, 4, annotated={4, 5})  # annotated but not exhaustively: yes
    assert not can_be_missing(image, 5, annotated={4, 5})  # exhaustively annotated: all are labelled
    assert not can_be_missing(image, 7, annotated={4, 5})  # verified absent
    assert can_be_missing(image, 9, annotated={4, 5})  # never verified
    assert can_be_missing({"id": 2}, 5, annotated={5}) is False and can_be_missing({"id": 2}, 6, set())
    preds = [{"image_id": 1, "category_id": c, "bbox": [30, 30, 5, 5], "score": 0.9} for c in (4, 5, 7, 9)]
    gt_cats = {1: {4, 5}}
    selector = Selector("missing", 0.5, {1: image}, {1: [[0, 0, 5, 5]]}, gt_categories=gt_cats)
    out = pseudo_labels_from_predictions(preds, selector, [])
    assert [a["category_id"] for a in out["annotations"]] == [4, 9]


def test_score_distribution_and_missing_recall():
    from lvisctl.inference.pseudo_label_records import missing_recall, score_distribution

    preds = [{"category_id": 1 + (i % 2), "score": s} for i, s in enumerate([0.01, 0.02, 0.03, 0.04, 0.1])]
    lines = score_distribution(preds, {1: "r", 2: "f"})
    # linear interpolation at position q * 4: p50 = .03, p90 = .04 + .6 * .06, p99 = .04 + .96 * .06
    assert lines[0] == "predicted scores: 5 detections, p50 0.030, p90 0.076, p99 0.098, max 0.100"
    assert lines[1].startswith("  r: 3 detections") and lines[2].startswith("  f: 2 detections")
    assert score_distribution([], {}) == ["the model predicted nothing on these images"]
    hidden = [
        {"image_id": 1, "bbox": [0, 0, 10, 10]},
        {"image_id": 1, "bbox": [50, 50, 10, 10]},
        {"image_id": 2, "bbox": [0, 0, 10, 10]},
        {"image_id": 3, "bbox": [0, 0, 10, 10]},
    ]
    labels = [
        {"image_id": 1, "bbox": [0, 0, 10, 12]},  # IoU 100/120 = 0.83 with the first: found
        {"image_id": 1, "bbox": [55, 50, 10, 10]},  # IoU 50/150 = 0.33 with the second: not found
        {"image_id": 3, "bbox": [0, 0, 5, 10]},  # IoU 0.5 exactly: found
    ]
    assert missing_recall(labels, hidden) == 0.5


def test_streamed_file_equals_the_in_memory_selection(tmp_path):
    from lvisctl.inference.pseudo_labels import Selector, pseudo_labels_from_predictions, write_pseudo_labels

    images = {i: {"id": i, "width": 50, "height": 40, "file_name": f"{i}.jpg"} for i in (1, 2, 3)}
    preds = [
        {"image_id": i, "category_id": 4 + (k % 2), "bbox": [k, k, 5, 5], "score": 0.1 * k}
        for i in (1, 2)
        for k in range(1, 9)
    ]
    cats = [{"id": 4, "name": "a", "frequency": "r"}, {"id": 5, "name": "b", "frequency": "f"}]
    for mode in ("missing", "unlabeled"):
        kwargs = dict(score_thresh={4: 0.3, 5: 0.6}, max_per_image=3)
        selector = Selector(mode, kwargs["score_thresh"], images, {1: [[0, 0, 2, 2]]}, max_per_image=3)
        expected = pseudo_labels_from_predictions(preds, selector, cats)
        n_labels, n_images = write_pseudo_labels(tmp_path / f"{mode}.json", iter(preds), selector, cats)
        got = json.loads((tmp_path / f"{mode}.json").read_text())
        assert got == expected and (n_labels, n_images) == (len(got["annotations"]), len(got["images"]))
    assert [i["id"] for i in got["images"]] == [1, 2, 3]  # unlabeled: every image, even without labels


def test_score_sample_is_bounded():
    from lvisctl.inference.pseudo_label_records import ScoreSample

    sample = ScoreSample({1: "r"}, capacity=100)
    sample.add({"category_id": 1, "score": i / 10_000} for i in range(10_000))
    assert sample.counts == {"all": 10_000, "r": 10_000} and len(sample.samples["all"]) == 100
    lines = sample.lines()
    assert lines[0].startswith("predicted scores: 10000 detections, p50 0.") and lines[0].endswith(
        "max 1.000"
    )
    median = float(lines[0].split("p50 ")[1].split(",")[0])
    assert 0.35 < median < 0.65  # a uniform sample of a uniform distribution


def test_category_filter_is_a_switch():
    """pseudolabel.category_filter (lvisctl's addition) on: only categories that can be missing; off: the
    paper's rule, every confident box that overlaps no ground truth."""
    from lvisctl.config import load_config
    from lvisctl.inference.pseudo_labels import Selector

    assert load_config(None).pseudolabel.category_filter is True
    image = {"id": 1, "width": 50, "height": 50, "neg_category_ids": [7], "not_exhaustive_category_ids": [4]}
    preds = [{"image_id": 1, "category_id": c, "bbox": [30, 30, 5, 5], "score": 0.9} for c in (4, 5, 7, 9)]
    args = ("missing", 0.5, {1: image}, {1: [[0, 0, 5, 5]]}, {1: {4, 5}}, 0.0, 50)
    assert [r["category_id"] for r in Selector(*args).select(1, preds)] == [4, 9]
    assert [r["category_id"] for r in Selector(*args, category_filter=False).select(1, preds)] == [4, 5, 7, 9]


def test_score_thresholds_refuse_what_cannot_be_meant():
    """Issue 22 item 14: "0.5,0.6" was taken as 0.6 without a word."""
    from lvisctl.inference.pseudo_labels import ScoreThresholds

    for bad, why in (("0.5,0.6", "a second bare number"), ("r=0.3,c=0.4,r=0.2", "r= twice"), ("nan", "")):
        with pytest.raises(LvisctlError, match="--score-thresh") as err:
            ScoreThresholds.parse(bad)
        assert why in str(err.value)
