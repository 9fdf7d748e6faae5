"""Ensembling: WBF boxes equal to ensemble-boxes, masks fused by a weighted pixel vote."""

import numpy as np
import pytest
import torch

from lvisctl.errors import LvisctlError
from lvisctl.inference.ensemble_fusion import (
    EnsemblePredictor,
    EnsembleSettings,
    fuse_detections,
    wbf_clusters,
)


def dets(boxes, scores, labels, masks, mask_scores=None):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.stack(masks) if masks else torch.zeros((0, 40, 40), dtype=torch.bool),
    }
    if mask_scores is not None:
        out["mask_scores"] = torch.tensor(mask_scores)
    return out


def rows(r0, r1, c0=0, c1=20):
    m = torch.zeros((40, 40), dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def test_wbf_clusters_equal_ensemble_boxes():
    from ensemble_boxes import weighted_boxes_fusion

    rng = np.random.default_rng(3)
    for _ in range(40):
        models = int(rng.integers(1, 4))
        boxes, scores, labels = [], [], []
        for _ in range(models):
            n = int(rng.integers(0, 40))
            xy = rng.random((n, 2)) * 0.7
            boxes.append(np.concatenate([xy, xy + rng.random((n, 2)) * 0.29 + 0.01], axis=1))
            scores.append(rng.random(n))
            labels.append(rng.integers(0, 4, n))
        weights = list(rng.random(models) + 0.5)
        ref = weighted_boxes_fusion(boxes, scores, labels, weights=weights, iou_thr=0.55, skip_box_thr=0.1)
        got = wbf_clusters(boxes, scores, labels, weights, 0.55, 0.1)
        for a, b in zip(ref, got[:3], strict=True):
            np.testing.assert_allclose(a, b)
        kept = sum(int((s >= 0.1).sum()) for s in scores)
        assert sum(len(c) for c in got[3]) == kept  # every input box is in exactly one cluster


def test_wbf_fuses_boxes_and_votes_masks_by_hand():
    a = dets([[0.0, 0, 20, 20]], [0.9], [1], [rows(0, 10)], mask_scores=[0.45])
    b = dets([[0.0, 0, 20, 24]], [0.3], [1], [rows(0, 20)], mask_scores=[0.3])  # IoU 400/480 = 0.83
    out = fuse_detections([a, b], (40, 40))
    assert out["labels"].tolist() == [1]
    # box: score-weighted mean of the members; score: mean of the scores (both models present)
    assert out["boxes"][0].tolist() == pytest.approx([0, 0, 20, (0.9 * 20 + 0.3 * 24) / 1.2])
    assert out["scores"].tolist() == pytest.approx([0.6])
    # rows 10..19 are only in b's mask: weight 0.3 of 1.2 < half -> out
    assert torch.equal(out["masks"][0], rows(0, 10))
    # mask score: the fused score times the score-weighted mask-IoU ratio (0.5 and 1.0)
    assert out["mask_scores"].tolist() == pytest.approx([0.6 * (0.9 * 0.5 + 0.3 * 1.0) / 1.2])
    heavy_b = fuse_detections([a, b], (40, 40), weights=[1, 4])  # b: 0.3 * 4 = 1.2 of 2.1 > half
    assert torch.equal(heavy_b["masks"][0], rows(0, 20))


def test_wbf_keeps_classes_apart_and_caps_per_image():
    a = dets([[0.0, 0, 20, 20], [5.0, 5, 30, 30]], [0.9, 0.8], [1, 2], [rows(0, 10), rows(5, 30)])
    b = dets([[0.0, 0, 20, 20]], [0.7], [2], [rows(0, 20)])  # same box, other class: not fused with a's 1
    out = fuse_detections([a, b], (40, 40))
    assert sorted(out["labels"].tolist()) == [1, 2, 2]
    assert len(fuse_detections([a, b], (40, 40), k=2)["scores"]) == 2


def test_nms_and_soft_nms_keep_each_winner_with_its_own_mask():
    a = dets([[0.0, 0, 20, 20]], [0.9], [1], [rows(0, 10)])
    b = dets([[0.0, 0, 20, 24]], [0.3], [1], [rows(0, 20)])
    out = fuse_detections([a, b], (40, 40), method="nms")
    assert out["scores"].tolist() == pytest.approx([0.9]) and torch.equal(out["masks"][0], rows(0, 10))
    soft = fuse_detections([a, b], (40, 40), method="soft-nms")
    assert soft["scores"].tolist() == pytest.approx([0.9, 0.3 * np.exp(-((400 / 480) ** 2) / 0.5)])
    assert torch.equal(soft["masks"][1], rows(0, 20))
    with pytest.raises(LvisctlError, match="--method 'max'"):
        fuse_detections([a, b], (40, 40), method="max")


def test_ensemble_predictor_fuses_each_image_and_checks_weights():
    class Fixed:
        def __init__(self, d):
            self.d = d

        def predict_batch(self, images):
            return [self.d for _ in images]

    a = dets([[0.0, 0, 20, 20]], [0.9], [1], [rows(0, 10)])
    b = dets([[0.0, 0, 20, 24]], [0.3], [1], [rows(0, 20)])
    predictor = EnsemblePredictor([Fixed(a), Fixed(b)], EnsembleSettings())
    out = predictor.predict_batch([torch.zeros(3, 40, 40), torch.zeros(3, 40, 40)])
    assert [o["scores"].tolist() for o in out] == [pytest.approx([0.6])] * 2
    with pytest.raises(LvisctlError, match="3 weights for 2 checkpoints"):
        EnsemblePredictor([Fixed(a), Fixed(b)], EnsembleSettings(weights=(1, 2, 3)))


def roi_member(seed, n=12, size=(40, 48)):
    """A predictor's output with RoI-level masks (what Predictor / TTAPredictor give)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 20
    wh = torch.rand(n, 2, generator=g) * 18 + 4
    return {
        "boxes": torch.cat([xy, xy + wh], 1),
        "scores": torch.rand(n, generator=g),
        "labels": torch.randint(1, 3, (n,), generator=g),
        "mask_probs": torch.rand(n, 1, 28, 28, generator=g),
        "mask_scores": torch.rand(n, generator=g) * 0.5,
        "image_size": torch.tensor(size),
        "mask_thresh": torch.tensor(0.5),
    }


@pytest.mark.parametrize("method", ["wbf", "nms", "soft-nms"])
def test_roi_level_members_fuse_like_their_pasted_masks(method):
    from lvisctl.inference.predictor import full_masks

    members = [roi_member(0), roi_member(1)]
    members[1]["paste_boxes"] = members[1]["boxes"] + 1  # a paper-TTA member: masks from another box
    whole = [
        {**{k: m[k] for k in ("boxes", "scores", "labels", "mask_scores")}, "masks": full_masks(m)}
        for m in members
    ]
    got = fuse_detections(members, (40, 48), method=method, weights=[2, 1])
    ref = fuse_detections(whole, (40, 48), method=method, weights=[2, 1])
    for key in ("boxes", "scores", "labels", "mask_scores"):
        assert torch.allclose(got[key].float(), ref[key].float()), key
    assert torch.equal(full_masks(got), ref["masks"]) and len(ref["masks"]) > 0
