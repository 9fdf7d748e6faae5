"""mmdet 3.x with mmcv's compiled ops (``make test-integrations``): the import contract against mmdet's own
Mask R-CNN, the losses through mmdet's registry, and ``LvisctlLVISMetric`` against mmdet's ``LVISMetric``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmcv.ops", reason="mmcv with compiled ops not installed (make test-integrations)")
pytest.importorskip("mmdet.apis", reason="mmdet not installed (make test-integrations)")

import mmdet  # noqa: E402
from mmdet.registry import METRICS, MODELS  # noqa: E402
from PIL import Image  # noqa: E402

import lvisctl.integrations.mmdet  # noqa: E402, F401  (registers the lvisctl types)
from lvisctl.checkpoint_import import import_checkpoint  # noqa: E402
from lvisctl.checkpoint_import.categories import COCO_IDS  # noqa: E402
from lvisctl.data.lvis import load_lvis  # noqa: E402
from lvisctl.inference.factory import load_checkpoint_model  # noqa: E402
from lvisctl.losses.balanced_mask import balanced_mask_loss  # noqa: E402
from lvisctl.losses.eql import EqualizationLoss  # noqa: E402
from tests.helpers.tiny_run import CAT_IDS, SIZES, make_lvis

CONFIGS = Path(mmdet.__file__).parent / ".mim" / "configs"
SCALE = 160
IMAGE_SIZES = [(160, 208), (224, 160)]


def _mmdet_model():
    from mmdet.apis import init_detector
    from mmengine.config import Config

    cfg = Config.fromfile(str(CONFIGS / "mask_rcnn" / "mask-rcnn_r50_fpn_1x_coco.py"))
    cfg.model.backbone.init_cfg = None  # no download
    cfg.model.test_cfg.rcnn.update(score_thr=1e-4, max_per_img=300)  # LVIS test settings, as lvisctl's
    for step in cfg.test_dataloader.dataset.pipeline:
        if step["type"] == "Resize":
            step["scale"] = (1333, SCALE)
    torch.manual_seed(0)
    model = init_detector(cfg, device="cpu")
    with torch.no_grad():  # spread the random classifier so ranks are not decided by float noise
        model.roi_head.bbox_head.fc_cls.weight.mul_(40)
        model.roi_head.bbox_head.fc_reg.weight.mul_(20)
        model.roi_head.mask_head.conv_logits.weight.mul_(50)  # decided mask pixels, not coin flips at 0.5
    return model.eval()


def _coco80_json(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    images = []
    for i, (h, w) in enumerate(IMAGE_SIZES, start=1):
        pixels = rng.random((h, w, 3))
        pixels[h // 4 : h // 2, w // 4 : w // 2] = [0.9, 0.2, 0.1]
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"img{i}.png")
        images.append(
            {
                "id": i,
                "width": w,
                "height": h,
                "file_name": f"img{i}.png",
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        )
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [10, 10, 20, 20],
            "area": 400,
            "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
            "iscrowd": 0,
        }
    ]
    cats = [{"id": c, "name": f"coco{c}", "frequency": "f"} for c in COCO_IDS]
    path = folder / "coco80.json"
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    return path


def test_imported_mmdet_mask_rcnn_gives_mmdets_detections(tmp_path):
    from mmdet.apis import inference_detector

    model = _mmdet_model()
    path = tmp_path / "mask_rcnn_r50.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"cfg": model.cfg.pretty_text}}, path)
    data = _coco80_json(tmp_path)
    report = import_checkpoint(path, tmp_path / "run", overrides=[f"data.train={data}"]).report
    assert report.framework == "mmdet" and report.classifier == "kept"
    mine, _, _ = load_checkpoint_model(tmp_path / "run" / "checkpoints" / "stage1_final.pt")
    for i in range(1, len(IMAGE_SIZES) + 1):
        rgb = np.array(Image.open(tmp_path / f"img{i}.png"))
        ref = inference_detector(model, rgb[..., ::-1].copy()).pred_instances  # mmdet reads BGR arrays
        with torch.no_grad():
            out = mine([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0]
        n = len(ref.scores)
        assert n > 20 and len(out["scores"]) == n
        torch.testing.assert_close(out["scores"], ref.scores, atol=1e-5, rtol=1e-4)
        assert torch.equal(out["labels"], ref.labels + 1)
        # detections of equal score (to 1e-5) and class may come in either order (near-ties of the sort):
        # pair each with the nearest reference box among them
        order = torch.arange(n)
        for k in range(n):
            tied = ((ref.scores - ref.scores[k]).abs() <= 1e-5) & (ref.labels == ref.labels[k])
            if int(tied.sum()) > 1:
                candidates = torch.nonzero(tied).flatten()
                best = candidates[(ref.bboxes[candidates] - out["boxes"][k]).abs().amax(1).argmin()]
                order[k] = best
        ref = ref[order]  # mmdet's InstanceData indexes every field at once
        torch.testing.assert_close(out["boxes"], ref.bboxes, atol=0.02, rtol=0)
        # masks: the RoI-level probabilities (28 x 28 per detection) are the same; pasting into the image
        # differs by design (mmdet samples with grid_sample, torchvision-style pasting resizes per box)
        torch.testing.assert_close(
            _lvisctl_roi_masks(mine, rgb, out), _mmdet_roi_masks(model, rgb, ref), atol=1e-4, rtol=1e-3
        )


def _mmdet_roi_masks(model, rgb, ref):
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import bbox2roi

    bgr = torch.from_numpy(rgb[..., ::-1].copy()).permute(2, 0, 1)
    data = model.data_preprocessor({"inputs": [bgr], "data_samples": [DetDataSample()]}, False)
    with torch.no_grad():
        feats = model.extract_feat(data["inputs"])
        logits = model.roi_head._mask_forward(feats, bbox2roi([ref.bboxes]))["mask_preds"]
    return logits[torch.arange(len(ref.labels)), ref.labels].sigmoid()


def _lvisctl_roi_masks(model, rgb, out):
    img = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        feats, images = model.extract_features([img])
        probs = model.predict_masks(feats, [out["boxes"]], [out["labels"]], images.image_sizes, paste=False)
    return probs[0][:, 0]


# ------------------------------------------------------------------------------------------ losses
def test_losses_build_from_the_registry_and_equal_lvisctls(tmp_path):
    gt = str(make_lvis(tmp_path))
    stats = load_lvis(gt).category_stats()
    k = stats.num_classes
    eql = MODELS.build(dict(type="LvisctlEQLLoss", ann_file=gt, loss_weight=2.0))
    assert eql.get_cls_channels(k) == k  # EQL: K sigmoid logits
    logits, labels_mm = torch.randn(6, k), torch.tensor([0, 1, 2, k, k, 1])  # mmdet: background = K
    expected = EqualizationLoss(stats.image_frequency).loss(logits, torch.tensor([1, 2, 3, 0, 0, 2]))
    torch.testing.assert_close(eql(logits, labels_mm), 2.0 * expected)
    probs = eql.get_activation(logits)
    assert probs.shape == (6, k + 1) and torch.allclose(probs[:, :k], logits.sigmoid())
    bags = MODELS.build(dict(type="LvisctlBAGSLoss", ann_file=gt))
    assert bags.get_cls_channels(k) > k + 1 and bags(torch.randn(6, bags.get_cls_channels(k)), labels_mm) > 0

    pred, target = torch.randn(4, k, 28, 28), (torch.rand(4, 28, 28) > 0.6).float()
    label = torch.tensor([0, 2, 1, 0])
    mask_loss = MODELS.build(dict(type="LvisctlBalancedMaskLoss"))
    want = balanced_mask_loss(pred[torch.arange(4), label], target, target.mean(dim=(1, 2)))
    torch.testing.assert_close(mask_loss(pred, target, label), want)
    assert MODELS.build(dict(type="LvisctlBoundaryLoss"))(pred, target, label) > 0


# ------------------------------------------------------------------------------------------ metric
def _samples(seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (h, w) in enumerate(SIZES, start=1):
        n = 5
        xy = torch.rand(n, 2, generator=g) * 20
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 20], dim=1)
        boxes[0] = torch.tensor([10.0, 10.0, 30.0, 30.0])  # the ground truth object, with some score
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for j, b in enumerate(boxes.round().int().tolist()):
            masks[j, b[1] : b[3], b[0] : b[2]] = True
        labels = torch.randint(0, len(CAT_IDS), (n,), generator=g)
        labels[0] = i - 1  # contiguous index of image i's category
        pred = {"bboxes": boxes, "scores": torch.rand(n, generator=g), "labels": labels, "masks": masks}
        out.append({"img_id": i, "ori_shape": (h, w), "pred_instances": pred})
    return out


def test_lvisctl_metric_equals_mmdets_lvis_metric(tmp_path):
    import tests.helpers.lvis_reference  # noqa: F401  mmdet's LVISMetric runs lvis-api, which needs the np.float shim

    gt = str(make_lvis(tmp_path))
    samples = _samples(0)
    numbers = {}
    for name in ("LVISMetric", "LvisctlLVISMetric"):
        metric = METRICS.build(dict(type=name, ann_file=gt, metric=["bbox", "segm"]))
        metric.dataset_meta = {"classes": [f"c{c}" for c in CAT_IDS]}
        metric.process({}, samples)
        numbers[name] = metric.evaluate(len(samples))
    theirs, ours = numbers["LVISMetric"], numbers["LvisctlLVISMetric"]
    for key in ("lvis/bbox_AP", "lvis/bbox_AP50", "lvis/segm_AP", "lvis/segm_APf"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-3), key
    assert 0 < ours["lvis/bbox_AP50"] <= 1
