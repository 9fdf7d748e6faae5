import torch

from lvisctl.inference.pseudo_labels import (
    pseudo_label_file,
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
    missing = pseudo_labels_from_predictions(preds, images, gt, cats, mode="missing", score_thresh=0.5)
    assert [(a["image_id"], a["bbox"]) for a in missing["annotations"]] == [(1, [30.0, 30.0, 10.0, 10.0])]
    assert "segmentation" not in missing["annotations"][0]
    unl = pseudo_labels_from_predictions(preds, images, {}, cats, mode="unlabeled", score_thresh=0.3)
    assert [a["image_id"] for a in unl["annotations"]] == [1, 1, 2]
    assert unl["annotations"][0]["segmentation"] == seg
    assert [i["id"] for i in unl["images"]] == [1, 2]
