"""The paper's TTA (section 3.3): Soft-NMS and each of the four modifications on hand-made detections."""

import math

import numpy as np
import pytest
import torch

from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.inference.predictor import full_masks
from lvisctl.inference.test_augmentations import View
from lvisctl.inference.tta import (
    TTAPredictor,
    TTASettings,
    class_boost,
    covered_gaps,
    in_valid_range,
    paper_merge,
    paste_roi_masks,
    soft_nms,
)
from tests.helpers.inference import OFF
from tests.helpers.model import FixedModel
from tests.helpers.tta import make_pass, roi, settings


def merge(passes, s, boost=None, k=300, size=(200, 200)):
    """The merge's output with its RoI-level masks pasted as ``masks`` (what the results encoder writes)."""
    boost = torch.ones(5) if boost is None else boost
    out = paper_merge(passes, s, boost, size, k=k, merge_iou=0.5)
    return {**out, "masks": full_masks(out)}


# ------------------------------------------------------------------------------ Soft-NMS
def test_soft_nms_gaussian_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [100, 100, 110, 110], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.3, 0.7])
    labels = torch.tensor([1, 1, 1, 2])  # the last box is the first one in another class: untouched
    keep, new = soft_nms(boxes, scores, labels)
    # box 1 has IoU 0.5 with box 0: 0.8 * exp(-0.25 / 0.5); box 2 overlaps nothing
    assert keep.tolist() == [0, 3, 1, 2]
    assert new.tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-0.5), 0.3])


def test_soft_nms_linear_and_threshold_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 8], [0, 0, 10, 2]])
    scores = torch.tensor([0.9, 0.8, 0.5, 0.0015])
    keep, new = soft_nms(boxes, scores, torch.ones(4, dtype=torch.int64), method="linear")
    # box 2 (IoU 0.8 with box 0): 0.5 * 0.2 = 0.1, then box 1 (IoU 0.5 -> 0.4) is taken first;
    # box 2 vs box 1: IoU 50/80 = 0.625 -> 0.1 * 0.375. Box 3: IoU 0.2 with 0 (<= 0.3: no decay),
    # IoU 0.4 with box 1 -> 0.0015 * 0.6 = 0.0009 < 0.001: dropped.
    assert keep.tolist() == [0, 1, 2]
    assert new.tolist() == pytest.approx([0.9, 0.4, 0.0375])


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_keeps_what_ensemble_boxes_keeps(method):
    from ensemble_boxes import soft_nms as eb_soft_nms

    rng = np.random.default_rng(7)
    for _ in range(60):
        n = int(rng.integers(1, 150))
        xy = rng.random((n, 2)) * 0.7
        boxes = np.concatenate([xy, xy + rng.random((n, 2)) * 0.29 + 0.01], axis=1)
        scores, labels = rng.random(n), rng.integers(0, 8, n)
        keep, new = soft_nms(
            torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels), method=method, iou_thresh=0.3
        )
        ref_boxes, ref_scores, ref_labels = eb_soft_nms(
            [boxes], [scores], [labels], method={"linear": 1, "gaussian": 2}[method], iou_thr=0.3, sigma=0.5
        )
        mine = sorted(zip(map(tuple, boxes[keep.numpy()].round(12)), scores[keep.numpy()], strict=True))
        ref = sorted(zip(map(tuple, ref_boxes.round(12)), ref_scores, strict=True))
        assert mine == ref  # the same detections, ensemble-boxes with their original scores
        assert (np.diff(new.numpy()) <= 0).all() and (new.numpy() <= scores[keep.numpy()] + 1e-12).all()


def test_soft_nms_many_classes_is_class_wise():
    rng = np.random.default_rng(0)
    n = 3000
    xy = rng.random((n, 2)) * 500
    boxes = torch.tensor(np.concatenate([xy, xy + 10 + rng.random((n, 2)) * 90], axis=1))
    labels = torch.tensor(rng.integers(1, 1204, n))
    scores = torch.tensor(rng.random(n))
    keep, new = soft_nms(boxes, scores, labels)
    for c in labels[:5].tolist():  # each class alone gives the same survivors and scores
        idx = torch.nonzero(labels == c).flatten()
        k1, n1 = soft_nms(boxes[idx], scores[idx], labels[idx])
        mine = keep[labels[keep] == c]
        assert idx[k1].tolist() == mine.tolist()
        assert n1.tolist() == pytest.approx(new[labels[keep] == c].tolist())


# ------------------------------------------------------------------------------ modification 1
def test_small_box_is_dropped_at_the_low_scale_and_kept_at_the_high_one():
    small, large = [10.0, 10, 30, 30], [0.0, 0, 150, 150]  # sizes 20 and 150 px
    low = make_pass([small, large], [0.9, 0.8], [1, 2], 400)
    high = make_pass([[11.0, 10, 31, 30], [0.0, 0, 149, 150]], [0.6, 0.95], [1, 2], 1400)
    assert in_valid_range([low, high], settings(range_filter=True)).tolist() == [False, True, True, False]
    out = merge([low, high], settings(range_filter=True))
    assert out["boxes"].tolist() == [large, [11.0, 10, 31, 30]]  # small from 1400, large from 400
    assert out["scores"].tolist() == pytest.approx([0.8, 0.6])
    off = merge([low, high], settings())  # plain NMS: the higher-scoring copy wins
    assert off["scores"].tolist() == pytest.approx([0.95, 0.9])


def test_default_ranges_cover_every_size_and_bad_ranges_are_refused():
    s = TTASettings()
    assert covered_gaps(s.valid_ranges) == [] and len(s.valid_ranges) == len(s.scales)
    assert s.scales[0] == 400 and s.scales[-1] == 1400
    with pytest.raises(LvisctlError, match="no test scale keeps boxes of size 64-inf"):
        TTASettings(scales=(400, 1400), valid_ranges=((0, 32), (32, 64))).check()
    with pytest.raises(LvisctlError, match="2 ranges for 3 test scales"):
        TTASettings(scales=(400, 800, 1400), valid_ranges=((0, 64), (32, math.inf))).check()


# ------------------------------------------------------------------------------ modification 2
def test_rare_score_is_boosted_when_merging():
    stats = CategoryStats.from_dict(
        {
            "cat_ids": [1, 2, 3, 4],
            "names": ["a", "b", "c", "d"],
            "image_count": [1, 5, 50, 1],
            "instance_count": [1, 5, 50, 1],
            "frequency": ["r", "c", "f", "r"],
            "num_images": 50,
        }
    )
    s = settings(rare_boost=True, rare_factor=1.1, common_factor=1.05)
    boost = class_boost(stats, s)
    assert boost.tolist() == pytest.approx([1.0, 1.1, 1.05, 1.0, 1.1])
    p = make_pass([[0.0, 0, 50, 50], [60, 60, 90, 90], [0, 0, 20, 20]], [0.5, 0.52, 0.95], [1, 3, 4], 400)
    out = merge([p], s, boost, k=2)
    assert out["labels"].tolist() == [4, 1]  # the rare 0.5 (-> 0.524) beats the frequent 0.52 for the top 2
    # odds x 1.1: 0.95 -> 0.9543 (never above 1), 0.5 -> 0.5238
    assert out["scores"].tolist() == pytest.approx([0.95 * 1.1 / 1.095, 0.55 / 1.05])
    assert merge([p], settings(), class_boost(stats, settings()), k=2)["labels"].tolist() == [4, 3]


def test_rare_boost_keeps_the_order_of_high_rare_scores():
    """(s x 1.1).clamp(max=1) tied every rare score above 1/1.1 at 1.0; AP ranks by them, so no ties."""
    from lvisctl.inference.tta import boost_scores

    high = torch.tensor([0.92, 0.95, 0.97, 0.99, 0.999])
    boosted = boost_scores(high, 1.1)
    assert (torch.diff(boosted) > 0).all() and (boosted <= 1).all() and (boosted > high).all()
    low = torch.tensor([0.001, 0.01, 0.05])
    assert boost_scores(low, 1.1).tolist() == pytest.approx((low * 1.1).tolist(), rel=0.006)  # ~ x1.1
    assert boost_scores(high, 1.0).tolist() == pytest.approx(high.tolist())
    # through the merge: five rare detections (no overlap) keep their order and stay distinct
    boxes = [[i * 30.0, 0, i * 30 + 20, 20] for i in range(5)]
    p = make_pass(boxes, high.tolist(), [1] * 5, 400)
    stats = CategoryStats.from_dict(
        {
            "cat_ids": [1],
            "names": ["a"],
            "image_count": [1],
            "instance_count": [1],
            "frequency": ["r"],
            "num_images": 5,
        }
    )
    out = merge([p], settings(rare_boost=True), class_boost(stats, settings(rare_boost=True)))
    assert out["boxes"][:, 0].tolist() == [120.0, 90.0, 60.0, 30.0, 0.0]
    assert len(set(out["scores"].tolist())) == 5


def test_paper_tta_flip_is_off_by_default():
    assert TTASettings().flip is False
    from lvisctl.config import load_config

    assert load_config(None, ["inference.tta.mode=paper"]).inference.tta.flip is False


# ------------------------------------------------------------------------------ modification 3
def test_nms_at_0_7_comes_before_soft_nms():
    a, b, c = [0.0, 0, 10, 10], [0.0, 0, 10, 8], [0.0, 0, 10, 5]  # IoU(a,b)=0.8, IoU(a,c)=0.5
    p = make_pass([a, b, c], [0.9, 0.8, 0.7], [1, 1, 1], 400)
    out = merge([p], settings(soft_nms=True))
    # NMS 0.7 removes b first, so c decays only by a: 0.7 * exp(-0.5^2 / 0.5)
    assert out["boxes"].tolist() == [a, c]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7 * math.exp(-0.5)])
    # Soft-NMS alone (NMS at 1.0) keeps b: decayed by a to 0.8 * exp(-0.8^2 / 0.5), below c, then by c
    # (IoU 50/80 = 0.625)
    only_soft = merge([p], settings(soft_nms=True, nms_iou=1.0))
    assert only_soft["boxes"].tolist() == [a, c, b]
    assert only_soft["scores"].tolist() == pytest.approx(
        [0.9, 0.7 * math.exp(-0.5), 0.8 * math.exp(-1.28) * math.exp(-(0.625**2) / 0.5)]
    )
    off = merge([p], settings())  # plain class-wise NMS at 0.5: b (0.8 > 0.5) goes, c (0.5) stays
    assert off["scores"].tolist() == pytest.approx([0.9, 0.7])


# ------------------------------------------------------------------------------ modification 4
def test_thin_large_box_takes_its_mask_from_the_high_resolution_pass():
    big = [20.0, 20, 180, 180]
    low = make_pass([big], [0.9], [2], 400, factor=1.0, masks=roi("diagonal")[None])
    high = make_pass([[20.0, 22, 180, 180]], [0.7], [2], 1400, factor=3.5, masks=roi("left")[None])
    other_class = make_pass([big], [0.5], [3], 1400, factor=3.5, masks=roi("full")[None])
    s = settings(mask_from_best_scale=True)
    out = merge([low, high, other_class], s)
    assert out["boxes"][0].tolist() == big and out["scores"][0].item() == pytest.approx(0.9)
    expected = paste_roi_masks(roi("left")[None], high.boxes, (200, 200), 0.5)[0]
    assert torch.equal(out["masks"][0], expected)  # the 1400 pass's mask, pasted in its box
    own = merge([low, high, other_class], settings())
    assert torch.equal(own["masks"][0], paste_roi_masks(roi("diagonal")[None], low.boxes, (200, 200), 0.5)[0])


def test_compact_mask_comes_from_the_scale_where_the_box_is_near_mask_box_size():
    box = [20.0, 20, 120, 120]  # 100 px: 100 px at the 400 pass, 350 px at the 1400 pass
    low = make_pass([[20.0, 21, 120, 120]], [0.6], [1], 400, factor=1.0, masks=roi("full")[None])
    high = make_pass([box], [0.9], [1], 1400, factor=3.5, masks=roi("top")[None])
    out = merge([low, high], settings(mask_from_best_scale=True, mask_box_size=112))
    assert out["boxes"][0].tolist() == box  # the box from the 1400 pass ...
    assert torch.equal(out["masks"][0], paste_roi_masks(roi("full")[None], low.boxes, (200, 200), 0.5)[0])
    # ... its mask from the 400 pass. A poor overlap (below mask_match_iou) keeps the box's own mask:
    far = make_pass([[60.0, 60, 160, 160]], [0.6], [1], 400, factor=1.0, masks=roi("full")[None])
    own = merge([far, high], settings(mask_from_best_scale=True, mask_box_size=112))
    assert own["masks"][0].sum() < out["masks"][0].sum()


def test_mask_scores_follow_the_mask_source():
    low = make_pass([[20.0, 20, 180, 180]], [0.9], [2], 400, masks=roi("diagonal")[None], mask_scores=[0.45])
    high = make_pass(
        [[20.0, 22, 180, 180]], [0.7], [2], 1400, factor=3.5, masks=roi("left")[None], mask_scores=[0.56]
    )
    out = merge([low, high], settings(mask_from_best_scale=True))
    assert out["mask_scores"].tolist() == pytest.approx([0.9 * 0.56 / 0.7])
    assert "mask_scores" not in merge([make_pass([[0.0, 0, 5, 5]], [0.5], [1], 400)], settings())


# ------------------------------------------------------------------------------ predictor
def test_tta_predictor_runs_every_scale_and_flip_and_unmirrors_boxes():
    model = FixedModel()
    s = TTASettings(scales=(30, 60), max_size=1333, flip=True, **OFF)  # flip: an extra, asked for here
    predictor = TTAPredictor(model, "cpu", s, torch.ones(4))
    (flipped,) = predictor.predict_pass([torch.rand(3, 60, 100)], View(30, ("hflip",)))
    # input 30x50; the model's [5,3,25,30] in the mirrored input is [25,3,45,30] unmirrored, x2
    assert flipped.boxes[0].tolist() == [50.0, 6.0, 90.0, 60.0] and flipped.view == ("hflip",)
    model.seen.clear()
    out = predictor.predict(torch.rand(3, 60, 100))
    assert model.seen == [(30, 50), (30, 50), (60, 100), (60, 100)]
    masks = full_masks(out)
    assert masks.shape[1:] == (60, 100) and masks.dtype == torch.bool
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)
    assert [50.0, 6.0, 90.0, 60.0] in out["boxes"].tolist()


def test_merged_roi_mask_is_encoded_in_its_source_box():
    """The paper merge keeps the source pass's RoI mask and box (``paste_boxes``); the results encoder
    pastes it there, at the original size, not in the kept detection's box."""
    from lvisctl.data.categories import CategoryMap
    from lvisctl.inference.results import detections_to_records, encode_masks

    low = make_pass([[20.0, 20, 180, 180]], [0.9], [2], 400, masks=roi("diagonal")[None])
    high = make_pass([[20.0, 22, 180, 180]], [0.7], [2], 1400, factor=3.5, masks=roi("left")[None])
    out = paper_merge([low, high], settings(mask_from_best_scale=True), torch.ones(5), (200, 200))
    assert "masks" not in out and out["paste_boxes"].tolist() == high.boxes.tolist()
    assert out["boxes"].tolist() == low.boxes.tolist()
    (record,) = detections_to_records(7, out, CategoryMap([1, 2, 3, 4]))
    expected = encode_masks(paste_roi_masks(roi("left")[None], high.boxes, (200, 200), 0.5))[0]
    assert record["segmentation"] == expected and record["bbox"] == [20.0, 20.0, 160.0, 160.0]


def test_flipped_pass_roi_masks_match_the_mirrored_pasted_masks_of_the_real_model():
    """A flipped pass keeps the model's RoI masks mirrored back with the boxes: pasted in the un-mirrored
    image they equal the model's own pasted masks of the mirrored input, flipped (up to the integer box
    corners, which are not mirror-symmetric)."""
    from tests.helpers.model import tiny_model

    model = tiny_model("inference.score_thresh=0.0").eval()
    image = torch.rand(3, 64, 96)
    s = TTASettings(scales=(64,), max_size=200, **OFF)
    predictor = TTAPredictor(model, "cpu", s, torch.ones(5))
    (p,) = predictor.predict_pass([image], View(64, ("hflip",)))
    assert p.roi_masks.shape[1:] == (28, 28) and len(p) > 0
    with torch.no_grad():
        ref = model([image.flip(-1)])[0]
    order = predictor.kept_order(ref["scores"])
    mirrored = ref["masks"][order][:, 0].flip(-1) > 0.5
    mine = paste_roi_masks(p.roi_masks, p.boxes, (64, 96), 0.5)
    assert (mine == mirrored).float().mean() > 0.995
    inter = (mine & mirrored).sum(dim=(1, 2)).float()
    union = (mine | mirrored).sum(dim=(1, 2)).float()
    assert (inter[union > 20] / union[union > 20]).mean() > 0.98
