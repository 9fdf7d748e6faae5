import pytest
import torch

from lvisctl.inference.predictor import Predictor, merge_nms, resized_size, top_k
from tests.helpers.model import FixedModel


@pytest.mark.parametrize(
    ("hw", "scale", "max_size", "expected"),
    [
        ((60, 100), 30, 1333, (30, 50)),  # short side 60 -> 30, factor 0.5
        ((60, 100), 30, 40, (24, 40)),  # long side capped: factor 40/100 = 0.4
        ((480, 640), 800, 1333, (800, 1067)),  # 640 * 800/480 = 1066.67 -> 1067
        ((100, 1000), 800, 1333, (133, 1333)),  # factor 1.333: 100 * 1.333 = 133.3 -> 133
    ],
)
def test_resized_size(hw, scale, max_size, expected):
    assert resized_size(*hw, scale, max_size) == expected


def test_predict_resizes_and_maps_back_to_original():
    model = FixedModel().train()
    predictor = Predictor(model, "cpu", scales=(30,), max_size=1333)
    image = torch.rand(3, 60, 100)
    dets = predictor.predict(image)
    assert model.seen == [(30, 50)]  # the predictor chose the scale, the model did not resize
    assert model.training_flags == [False] and model.grad_enabled == [False]
    # sorted by score; boxes x2 back to 60x100 and clipped to the image
    assert dets["scores"].tolist() == pytest.approx([0.9, 0.5, 0.2])
    assert dets["labels"].tolist() == [2, 3, 1]
    assert dets["boxes"].tolist() == [
        [10.0, 6.0, 50.0, 60.0],
        [0.0, 0.0, 100.0, 16.0],
        [0.0, 0.0, 100.0, 60.0],
    ]
    masks = dets["masks"]
    assert masks.dtype == torch.bool and masks.shape == (3, 60, 100)
    # Input columns 0..24 are 0.9. Bilinear upsampling x2: original column 49 samples input x=24.25
    # (0.75 * 0.9 = 0.675 > 0.5), column 50 samples x=24.75 (0.25 * 0.9 = 0.225): exactly 0..49 survive.
    assert masks[0, :, :50].all() and not masks[0, :, 50:].any()
    assert masks[2].all()  # 0.7 everywhere
    # the 2x2 corner block (0.6) upsamples to rows/cols 0..2: column 3 samples x=1.25 -> 0.75*0.6 = 0.45
    assert masks[1].sum().item() == 9 and masks[1, :3, :3].all()


def test_top_k_and_score_threshold():
    predictor = Predictor(FixedModel(), "cpu", scales=(30,), detections_per_image=2, score_thresh=0.0)
    assert predictor.predict(torch.rand(3, 60, 100))["scores"].tolist() == pytest.approx([0.9, 0.5])
    predictor = Predictor(FixedModel(), "cpu", scales=(30,), score_thresh=0.3)
    dets = predictor.predict(torch.rand(3, 60, 100))
    assert dets["labels"].tolist() == [2, 3]
    assert all(v.shape[0] == 2 for v in dets.values())


def test_predict_batch_keeps_each_original_size_and_accepts_uint8():
    model = FixedModel()
    predictor = Predictor(model, "cpu", scales=(40,), max_size=60)
    images = [torch.rand(3, 20, 30), (torch.rand(3, 80, 40) * 255).to(torch.uint8)]
    out = predictor.predict_batch(images)
    assert model.seen == [(40, 60), (60, 30)]  # second: 80x40 -> 80x40 (short side 40), capped to 60 long
    assert [tuple(d["masks"].shape[1:]) for d in out] == [(20, 30), (80, 40)]
    assert out[0]["boxes"][0].tolist() == pytest.approx([2.5, 1.5, 12.5, 15.0])  # [5,3,25,30] * 0.5


def test_merge_nms_by_hand():
    def dets(boxes, scores, labels):
        n = len(scores)
        return {
            "boxes": torch.tensor(boxes),
            "scores": torch.tensor(scores),
            "labels": torch.tensor(labels),
            "masks": torch.zeros((n, 4, 4), dtype=torch.bool),
        }

    # B overlaps A with IoU 90/110 = 0.82 in the same class -> suppressed; C is B in another class -> kept
    a = dets([[0.0, 0.0, 10.0, 10.0]], [0.9], [1])
    bc = dets([[1.0, 0.0, 11.0, 10.0], [1.0, 0.0, 11.0, 10.0]], [0.8, 0.7], [1, 2])
    merged = merge_nms([a, bc], iou_thresh=0.5, k=300)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert merged["labels"].tolist() == [1, 2]
    assert merge_nms([a, bc], iou_thresh=0.9, k=2)["scores"].tolist() == pytest.approx([0.9, 0.8])


def test_multi_scale_runs_every_scale_and_merges():
    model = FixedModel()
    predictor = Predictor(model, "cpu", scales=(30, 60), merge_iou=0.4)
    dets = predictor.predict(torch.rand(3, 60, 100))
    assert model.seen == [(30, 50), (60, 100)]
    # In original pixels: box 1 is [10,6,50,60] at scale 30 and [5,3,25,30] at 60 (IoU 0.25 < 0.4):
    # kept twice. The full-image box is identical at both scales (IoU 1) and the clipped one is
    # [0,0,100,16] vs [0,0,100,8] (IoU 0.5 > 0.4): the lower-scoring copy of each is suppressed.
    assert dets["scores"].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.2])
    assert dets["labels"].tolist() == [2, 2, 3, 1]


def test_custom_merge_receives_per_scale_detections():
    seen = []

    def merge(per_scale):
        seen.append([d["boxes"].shape[0] for d in per_scale])
        return per_scale[-1]

    predictor = Predictor(FixedModel(), "cpu", scales=(30, 45), merge=merge)
    out = predictor.predict_batch([torch.rand(3, 60, 100), torch.rand(3, 30, 30)])
    assert seen == [[3, 3], [3, 3]]
    assert out[1]["masks"].shape == (3, 30, 30)


def test_top_k_is_stable_for_ties():
    dets = {"scores": torch.tensor([0.5, 0.9, 0.5, 0.5]), "labels": torch.tensor([1, 2, 3, 4])}
    assert top_k(dets, 3)["labels"].tolist() == [2, 1, 3]


# ------------------------------------------------------------------------------ RoI-level masks
class RoIModel(FixedModel):
    """FixedModel that, like lvisctl's model, gives RoI-level ``mask_probs`` when asked (paste_masks=False).

    Each RoI mask is 0.9 in its left half (columns 0..13 of 28), 0.1 elsewhere."""

    def forward(self, images, paste_masks=True):
        outputs = super().forward(images)
        if not paste_masks:
            for out in outputs:
                del out["masks"]
                probs = torch.full((3, 1, 28, 28), 0.1)
                probs[:, :, :, :14] = 0.9
                out["mask_probs"] = probs
        return outputs


def test_predictor_keeps_roi_masks_and_pastes_them_at_the_original_size():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from lvisctl.inference.predictor import full_masks

    predictor = Predictor(RoIModel(), "cpu", scales=(30,), mask_thresh=0.5)
    assert predictor.roi_masks and not Predictor(FixedModel(), "cpu").roi_masks
    dets = predictor.predict(torch.rand(3, 60, 100))
    assert "masks" not in dets and dets["mask_probs"].shape == (3, 1, 28, 28)
    assert dets["image_size"].tolist() == [60, 100] and float(dets["mask_thresh"]) == 0.5
    assert dets["boxes"][0].tolist() == [10.0, 6.0, 50.0, 60.0]  # [5, 3, 25, 30] x 2: original pixels
    masks = full_masks(dets)
    # pasted once, at 60 x 100 into the original-size boxes (what detectron2 does): not resized from 30 x 50
    expected = paste_masks_in_image(dets["mask_probs"], dets["boxes"], (60, 100), padding=1)[:, 0] > 0.5
    assert masks.shape == (3, 60, 100) and torch.equal(masks, expected)
    # box [10, 6, 50, 60]: its left half is the mask, nothing outside the box
    assert masks[0, 10:55, 12:28].all() and not masks[0, :, 32:].any() and not masks[0, :5].any()
    assert torch.equal(full_masks(dets, torch.tensor([2])), masks[2:])
    # multi-scale: the per-image entries survive the merge, the RoI masks are concatenated and kept
    merged = Predictor(RoIModel(), "cpu", scales=(30, 60), merge_iou=0.4).predict(torch.rand(3, 60, 100))
    assert merged["mask_probs"].shape == (4, 1, 28, 28) and merged["image_size"].tolist() == [60, 100]


def test_records_from_roi_masks_equal_records_from_full_masks():
    from lvisctl.data.categories import CategoryMap
    from lvisctl.inference.predictor import full_masks
    from lvisctl.inference.results import detections_to_records

    dets = Predictor(RoIModel(), "cpu", scales=(45,)).predict(torch.rand(3, 60, 100))
    cmap = CategoryMap([5, 6, 7])
    fast = detections_to_records(1, dets, cmap)
    whole = {k: v for k, v in dets.items() if k in ("boxes", "scores", "labels")}
    assert fast == detections_to_records(1, {**whole, "masks": full_masks(dets)}, cmap)


def test_real_model_roi_masks_paste_to_its_default_output_and_predictor_rles_are_unchanged():
    """lvisctl's model: ``paste_masks=False`` gives the probabilities its default call pastes; at a test
    scale equal to the image size the predictor's RoI path writes the same RLEs as the old paste-at-input
    path (the paths differ only when the image is resized)."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from lvisctl.data.categories import CategoryMap
    from lvisctl.inference.results import detections_to_records
    from tests.helpers.model import tiny_model

    model = tiny_model("inference.score_thresh=0.0").eval()
    image = torch.rand(3, 64, 96)
    with torch.no_grad():
        pasted = model([image])[0]
        roi = model([image], paste_masks=False)[0]
    assert "masks" not in roi and roi["mask_probs"].shape[-2:] == (28, 28) and len(roi["boxes"]) > 0
    assert torch.equal(roi["boxes"], pasted["boxes"])
    assert torch.equal(
        paste_masks_in_image(roi["mask_probs"], roi["boxes"], (64, 96), padding=1), pasted["masks"]
    )
    cmap = CategoryMap(range(10, 14))
    new = Predictor(model, "cpu", scales=(64,), max_size=200)
    old = Predictor(model, "cpu", scales=(64,), max_size=200)
    old.roi_masks = False  # the model's own paste at input size, then the resize (identity here)
    records = [detections_to_records(1, p.predict(image), cmap) for p in (new, old)]
    # empty masks are never written (an untrained model has many): every non-empty one is
    non_empty = int((pasted["masks"][:, 0] > 0.5).flatten(1).any(1).sum())
    assert 0 < non_empty < len(roi["boxes"])
    assert records[0] == records[1] and len(records[0]) == non_empty
