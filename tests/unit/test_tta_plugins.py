"""TTA as plug-ins: invertible test augmentations (TTA_AUGMENTATIONS), merge steps (TTA_MERGE_STEPS) and
survivor masks (the mask head only for what the merge reads) on hand-made cases and the tiny real model."""

import math

import pytest
import torch

from lvisctl.errors import LvisctlError
from lvisctl.inference.merge_steps import (
    MaskFromBestScale,
    MergeState,
    MergeStep,
    NmsThenSoftNms,
    RangeFilter,
    RareBoost,
    run_merge,
)
from lvisctl.inference.predictor import full_masks
from lvisctl.inference.test_augmentations import (
    HFlip,
    HFlipTransform,
    Resize,
    ResizeTransform,
    TransformList,
    VFlip,
    VFlipTransform,
    View,
    views,
)
from lvisctl.inference.tta import TTAPredictor, TTASettings
from lvisctl.registry import TTA_AUGMENTATIONS, TTA_MERGE_STEPS
from tests.helpers.inference import OFF
from tests.helpers.model import FixedModel
from tests.helpers.tta import R, make_pass, roi, settings

BOXES = torch.tensor([[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 10.0, 8.0]])


def box_mask(box, h, w):
    m = torch.zeros((h, w), dtype=torch.bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------ augmentations
def test_augmentations_are_registered():
    assert {"resize", "hflip", "vflip"} <= set(TTA_AUGMENTATIONS.names())
    assert TTA_AUGMENTATIONS.get("vflip") is VFlip


def test_hflip_maps_boxes_and_masks_by_hand_and_round_trips_exactly():
    t = HFlipTransform(10)
    assert t.apply_boxes(BOXES).tolist() == [[6.0, 2.0, 9.0, 6.0], [0.0, 0.0, 10.0, 8.0]]
    masks = torch.stack([box_mask(b, 8, 10) for b in BOXES])
    flipped = t.apply_masks(masks)
    # the mask of a box, transformed, is the mask of the transformed box
    assert torch.equal(flipped, torch.stack([box_mask(b, 8, 10) for b in t.apply_boxes(BOXES)]))
    assert torch.equal(t.inverse().apply_boxes(t.apply_boxes(BOXES)), BOXES)
    assert torch.equal(t.inverse().apply_masks(flipped), masks)
    rois = torch.rand(2, R, R)
    assert torch.equal(t.apply_roi_masks(rois), rois.flip(-1))
    assert torch.equal(t.inverse().apply_roi_masks(t.apply_roi_masks(rois)), rois)


def test_vflip_maps_boxes_and_masks_by_hand_and_round_trips_exactly():
    t = VFlipTransform(8)
    assert t.apply_boxes(BOXES).tolist() == [[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 10.0, 8.0]]
    assert t.apply_boxes(torch.tensor([[1.0, 1.0, 3.0, 2.0]])).tolist() == [[1.0, 6.0, 3.0, 7.0]]
    masks = torch.stack([box_mask(b, 8, 10) for b in BOXES])
    assert torch.equal(t.apply_masks(masks), torch.stack([box_mask(b, 8, 10) for b in t.apply_boxes(BOXES)]))
    assert torch.equal(t.inverse().apply_masks(t.apply_masks(masks)), masks)
    assert torch.equal(t.inverse().apply_boxes(t.apply_boxes(BOXES)), BOXES)
    rois = torch.rand(2, R, R)
    assert torch.equal(t.apply_roi_masks(rois), rois.flip(-2))
    assert torch.equal(t.inverse().apply_roi_masks(t.apply_roi_masks(rois)), rois)


def test_resize_maps_boxes_and_masks_by_hand_and_round_trips_exactly():
    image = torch.rand(3, 8, 10)
    t = Resize(16, 1333).get_transform(image)
    assert t == ResizeTransform(8, 10, 16, 20) and t.apply_image(image).shape == (3, 16, 20)
    assert t.apply_boxes(BOXES).tolist() == [[2.0, 4.0, 8.0, 12.0], [0.0, 0.0, 20.0, 16.0]]
    masks = torch.stack([box_mask(b, 8, 10) for b in BOXES])
    up = t.apply_masks(masks)
    assert up.dtype == torch.bool
    assert torch.equal(up, torch.stack([box_mask(b, 16, 20) for b in t.apply_boxes(BOXES)]))
    assert torch.equal(t.inverse().apply_masks(up), masks)
    assert torch.equal(t.inverse().apply_boxes(t.apply_boxes(BOXES)), BOXES)
    rois = torch.rand(2, R, R)
    assert t.apply_roi_masks(rois) is rois  # a box scales with the image: its RoI mask is the same
    assert Resize(8, 1333).get_transform(image).apply_image(image) is image  # no resize, no copy


def test_a_chain_inverts_in_reverse_order():
    image = torch.rand(3, 8, 10)
    view, transform = HFlip()(image)
    assert torch.equal(view, image.flip(-1)) and transform == HFlipTransform(10)
    chain = TransformList((ResizeTransform(8, 10, 16, 20), HFlipTransform(20), VFlipTransform(16)))
    mapped = chain.apply_boxes(BOXES)
    assert mapped.tolist() == [[12.0, 4.0, 18.0, 12.0], [0.0, 0.0, 20.0, 16.0]]
    assert torch.equal(chain.inverse().apply_boxes(mapped), BOXES)
    masks = torch.stack([box_mask(b, 8, 10) for b in BOXES])
    assert torch.equal(chain.inverse().apply_masks(chain.apply_masks(masks)), masks)
    assert torch.equal(chain.apply_image(image), torch.nn.functional.interpolate(
        image[None], size=(16, 20), mode="bilinear", align_corners=False
    )[0].flip(-1).flip(-2))  # fmt: skip


def test_views_are_every_scale_plain_then_each_augmentation():
    assert views([30, 60], ["hflip", "vflip"]) == [
        *(View(30), View(30, ("hflip",)), View(30, ("vflip",))),
        *(View(60), View(60, ("hflip",)), View(60, ("vflip",))),
    ]
    assert TTASettings(flip=True, augmentations=("vflip", "hflip")).extra_views == ("hflip", "vflip")


def test_vflip_runs_end_to_end_with_no_edit_to_the_pass():
    """VFlip is only a registered class: the pass runs it and maps its boxes back like any view."""
    model = FixedModel()
    s = TTASettings(scales=(30,), max_size=1333, augmentations=("vflip",), **OFF)
    predictor = TTAPredictor(model, "cpu", s, torch.ones(4))
    (p,) = predictor.predict_pass([torch.rand(3, 60, 100)], View(30, ("vflip",)))
    # input 30x50; the model's [5,3,25,30] in the upside-down input is [5,0,25,27] upright, x2
    assert p.boxes[0].tolist() == [10.0, 0.0, 50.0, 54.0] and p.view == ("vflip",)
    model.seen.clear()
    out = predictor.predict(torch.rand(3, 60, 100))
    assert model.seen == [(30, 50), (30, 50)]
    # the box sticking out of the top, [-4, -2, 60, 8], is found at the bottom in the upside-down view
    assert [0.0, 0.0, 100.0, 16.0] in out["boxes"].tolist()
    assert [0.0, 44.0, 100.0, 60.0] in out["boxes"].tolist() and full_masks(out).shape[1:] == (60, 100)


def test_vflip_pass_roi_masks_match_the_mirrored_masks_of_the_real_model():
    from lvisctl.inference.tta import paste_roi_masks
    from tests.helpers.model import tiny_model

    model = tiny_model("inference.score_thresh=0.0").eval()
    image = torch.rand(3, 64, 96)
    predictor = TTAPredictor(model, "cpu", TTASettings(scales=(64,), max_size=200, **OFF), torch.ones(5))
    (p,) = predictor.predict_pass([image], View(64, ("vflip",)))
    with torch.no_grad():
        ref = model([image.flip(-2)])[0]
    mirrored = ref["masks"][predictor.kept_order(ref["scores"])][:, 0].flip(-2) > 0.5
    mine = paste_roi_masks(p.roi_masks, p.boxes, (64, 96), 0.5)
    assert len(p) > 0 and (mine == mirrored).float().mean() > 0.995


def test_unknown_augmentation_or_step_is_a_one_line_error():
    with pytest.raises(LvisctlError, match=r"inference.tta.augmentations: unknown augmentation 'vfilp'"):
        TTASettings(augmentations=("vfilp",)).check()
    with pytest.raises(LvisctlError, match=r"inference.tta.steps: .*'rare_bost'.*did you mean 'rare_boost'"):
        TTASettings(steps=("range_filter", "rare_bost")).check()
    from lvisctl.config import load_config

    cfg = load_config(None, ["inference.tta.mode=paper", "inference.tta.augmentations=[vflip]"])
    assert TTASettings.from_config(cfg.inference.tta).extra_views == ("vflip",)
    assert TTASettings.from_config(cfg.inference.tta).steps == (
        "range_filter", "rare_boost", "nms_soft_nms", "mask_from_best_scale"
    )  # fmt: skip


# ------------------------------------------------------------------------------ merge steps
def state_of(passes, k=300, boost=None):
    return MergeState.of(passes, _bank(passes), torch.ones(5) if boost is None else boost, k, 0.5)


def _bank(passes):
    from lvisctl.inference.tta import eager_bank

    return eager_bank(passes)


def test_the_four_steps_are_registered_in_the_paper_order():
    assert TTA_MERGE_STEPS.names()[:4] == (
        "range_filter",
        "rare_boost",
        "nms_soft_nms",
        "mask_from_best_scale",
    )
    assert [TTA_MERGE_STEPS.get(n) for n in TTASettings().steps] == [
        RangeFilter, RareBoost, NmsThenSoftNms, MaskFromBestScale
    ]  # fmt: skip


def test_range_filter_step_by_hand():
    low = make_pass([[10.0, 10, 30, 30], [0.0, 0, 150, 150]], [0.9, 0.8], [1, 2], 400)
    high = make_pass([[11.0, 10, 31, 30], [0.0, 0, 149, 150]], [0.6, 0.95], [1, 2], 1400)
    state = RangeFilter(settings(range_filter=True))(state_of([low, high]))
    assert state.keep.tolist() == [1, 2] and state.keep_scores.tolist() == pytest.approx([0.8, 0.6])
    assert RangeFilter(settings())(state_of([low, high])).keep.tolist() == [0, 1, 2, 3]  # switched off


def test_rare_boost_step_by_hand():
    p = make_pass([[0.0, 0, 5, 5], [6.0, 6, 9, 9]], [0.5, 0.5], [1, 2], 400)
    boost = torch.tensor([1.0, 1.1, 1.0, 1.0, 1.0])
    state = RareBoost(settings(rare_boost=True))(state_of([p], boost=boost))
    assert state.keep_scores.tolist() == pytest.approx([0.55 / 1.05, 0.5])  # odds x 1.1 for class 1 only


def test_nms_soft_nms_step_by_hand():
    a, b, c = [0.0, 0, 10, 10], [0.0, 0, 10, 8], [0.0, 0, 10, 5]  # IoU(a,b)=0.8, IoU(a,c)=0.5
    p = make_pass([a, b, c], [0.9, 0.8, 0.7], [1, 1, 1], 400)
    state = NmsThenSoftNms(settings(soft_nms=True))(state_of([p]))
    assert state.keep.tolist() == [0, 2]
    assert state.keep_scores.tolist() == pytest.approx([0.9, 0.7 * math.exp(-0.5)])
    off = NmsThenSoftNms(settings())(state_of([p], k=1))  # NMS at merge_iou 0.5, top 1
    assert off.keep.tolist() == [0] and off.keep_scores.tolist() == pytest.approx([0.9])


def first_only(state):
    state.keep, state.keep_scores = state.keep[:1], state.keep_scores[:1]
    return state


def test_mask_from_best_scale_step_asks_for_own_masks_only_where_its_rules_disagree():
    big = [20.0, 20, 180, 180]
    high = make_pass([[20.0, 22, 180, 180]], [0.7], [2], 1400, factor=3.5, masks=roi("left")[None])
    step = MaskFromBestScale(settings(mask_from_best_scale=True, mask_box_size=112))
    # 160 px: the size rule picks the 400 pass (its own), the thin rule the 1400 pass: the own mask decides
    thin = first_only(state_of([make_pass([big], [0.9], [2], 400, masks=roi("diagonal")[None]), high]))
    assert step.masks_needed(thin).tolist() == [0]
    assert step(thin).source.tolist() == [1]  # a diagonal stroke is thin: the 1400 pass's mask
    compact = first_only(state_of([make_pass([big], [0.9], [2], 400, masks=roi("full")[None]), high]))
    assert step(compact).source.tolist() == [0]  # not thin: the 400 pass, where 160 px is nearest 112
    # where both rules pick the same pass, no mask is read
    alone = state_of([make_pass([big], [0.9], [2], 1400, factor=0.5)])
    assert step.masks_needed(alone).numel() == 0 and step(alone).source.tolist() == [0]
    assert MaskFromBestScale(settings())(thin).source is None  # switched off: each keeps its own mask


def test_a_new_step_is_one_class_and_its_config_block():
    @TTA_MERGE_STEPS.register("test_score_floor", help="drops candidates below a floor (a test plug-in)")
    class ScoreFloor(MergeStep):
        keys = ("test_score_floor",)

        def __call__(self, state):
            ok = state.keep_scores >= self.settings.extra["test_score_floor"]["min"]
            return type(state)(
                **{**vars(state), "keep": state.keep[ok], "keep_scores": state.keep_scores[ok]}
            )

    tta = {**vars(TTASettings()), "mode": "paper", "valid_ranges": "auto"}
    tta.update(steps=["test_score_floor", "nms_soft_nms"], test_score_floor={"min": 0.6})
    s = TTASettings.from_config({k: v for k, v in tta.items() if k != "extra"})
    assert s.extra == {"test_score_floor": {"min": 0.6}}
    p = make_pass([[0.0, 0, 5, 5], [6.0, 6, 9, 9]], [0.5, 0.7], [1, 2], 400)
    out = run_merge([state_of([p])], [TTA_MERGE_STEPS.get(n)(s) for n in s.steps], None, [(10, 10)], 0.5)[0]
    assert out["scores"].tolist() == pytest.approx([0.7])


# ------------------------------------------------------------------------------ survivor masks
def _tiny_predictor(survivor_masks, **kw):
    from tests.helpers.model import tiny_model

    model = tiny_model("inference.score_thresh=0.0").eval()
    s = TTASettings(
        scales=(48, 64), max_size=200, flip=True, range_filter=False, survivor_masks=survivor_masks, **kw
    )
    return TTAPredictor(model, "cpu", s, torch.ones(5), detections_per_image=50), model


@pytest.mark.parametrize("soft_nms", [True, False])
def test_survivor_masks_give_what_every_pass_masks_give_with_a_fraction_of_the_rois(monkeypatch, soft_nms):
    images = [torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    every, _ = _tiny_predictor(False, soft_nms=soft_nms)
    ref = every.predict_batch(images)
    survivors, model = _tiny_predictor(True, soft_nms=soft_nms)
    calls = []
    head = model.predict_masks_and_scores
    monkeypatch.setattr(model, "predict_masks_and_scores", lambda f, b, *a: calls.append(b) or head(f, b, *a))
    got = survivors.predict_batch(images)
    for mine, theirs in zip(got, ref, strict=True):
        for key in ("boxes", "scores", "labels", "paste_boxes"):
            assert torch.equal(mine[key], theirs[key]), key
        assert torch.allclose(mine["mask_probs"], theirs["mask_probs"], atol=1e-5)
        assert torch.equal(full_masks(mine), full_masks(theirs)) and len(mine["scores"]) == 50
    rois = sum(b.shape[0] for boxes in calls for b in boxes)
    assert 0 < rois <= 2 * 2 * 50  # <= own + source per survivor; every pass: 2 images x 4 passes x 50
    assert len(calls) <= 2 * 4  # one call per pass and round, for both images at once
