"""``lvisctl import-checkpoint`` of mmdet's Seesaw LVIS models (``mask-rcnn_r50_fpn_seesaw-loss_sample1e-3-ms-
2x_lvis-v1``): a synthetic state dict of that layout (mmdet 3.3's R-50 Mask R-CNN keys, a K + 2 classifier
in mmdet's order: the K classes, then the objectness pair [object, background]), imported as cls_loss seesaw
with mmdet's NormedLinear classifier and the rows in lvisctl's Seesaw order (the same)."""

import json

import pytest
import torch
import torch.nn.functional as F

from lvisctl.checkpoint_import import import_checkpoint
from lvisctl.config import load_config
from lvisctl.data.categories import CategoryStats
from lvisctl.engine.checkpoint import load_checkpoint
from lvisctl.losses.classification import NormedLinear
from lvisctl.modeling.build import build_model
from tests.helpers.checkpoint_files import FIXTURE, _fake_state

K = 1203
# the parts of mmdet's config text (meta["cfg"]) the importer reads, as in the Seesaw zoo config
CFG_TEXT = (
    "model = dict(roi_head=dict(bbox_head=dict(num_classes=1203, "
    "cls_predictor_cfg=dict(type='NormedLinear', tempearture=20), "
    "loss_cls=dict(type='SeesawLoss', p=0.8, q=2.0, num_classes=1203, loss_weight=1.0))))"
)


def seesaw_state() -> dict[str, torch.Tensor]:
    shapes = dict(json.loads(FIXTURE.read_text())["mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"])
    shapes.update(
        {
            "roi_head.bbox_head.fc_cls.weight": [K + 2, 1024],
            "roi_head.bbox_head.fc_cls.bias": [K + 2],
            "roi_head.bbox_head.fc_reg.weight": [4 * K, 1024],
            "roi_head.bbox_head.fc_reg.bias": [4 * K],
            "roi_head.mask_head.conv_logits.weight": [K, 256, 1, 1],
            "roi_head.mask_head.conv_logits.bias": [K],
        }
    )
    state = _fake_state(list(shapes.items()))
    state["roi_head.bbox_head.loss_cls.cum_samples"] = torch.arange(K + 1, dtype=torch.float32)
    return state


@pytest.mark.parametrize("with_config_text", [True, False])
def test_mmdet_seesaw_lvis_model_imports_as_cls_loss_seesaw(tmp_path, with_config_text):
    state = seesaw_state()
    meta = {"dataset_meta": {"classes": None}, **({"cfg": CFG_TEXT} if with_config_text else {})}
    path = tmp_path / "seesaw.pth"
    torch.save({"state_dict": state, "meta": meta}, path)

    report = import_checkpoint(path, tmp_path / "run").report
    assert report.classifier == "kept" and all(g["re-initialised"] == 0 for g in report.groups.values())
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage1_final.pt")
    rh = ckpt["config"]["model"]["roi_heads"]
    assert rh["cls_loss"] == "seesaw" and rh["cls_loss_args"] == {"normed_temperature": 20.0}

    w = ckpt["model"]
    # lvisctl's Seesaw order is mmdet's: K class rows, then [object, background]: rows stay in place
    cls = w["roi_heads.box.head.predictor.cls_score.weight"]
    assert cls.shape == (K + 2, 1024) and torch.equal(cls, state["roi_head.bbox_head.fc_cls.weight"])
    assert torch.equal(
        w["roi_heads.box.head.predictor.cls_score.bias"], state["roi_head.bbox_head.fc_cls.bias"]
    )
    assert torch.equal(
        w["roi_heads.box.cls_loss.cum_samples"], state["roi_head.bbox_head.loss_cls.cum_samples"]
    )
    # class-specific box / mask outputs get lvisctl's background slot first, as for any mmdet model
    assert torch.equal(
        w["roi_heads.box.head.predictor.bbox_pred.weight"][4:], state["roi_head.bbox_head.fc_reg.weight"]
    )
    assert torch.equal(
        w["roi_heads.mask.head.predictor.weight"][1:], state["roi_head.mask_head.conv_logits.weight"]
    )


def test_imported_seesaw_classifier_scores_as_mmdet():
    """mmdet's Seesaw head on the same features: NormedLinear(20) logits, then ``get_activation``
    (softmax over the K classes times the objectness softmax's object probability)."""
    cfg = load_config(
        None,
        [
            "model.backbone.name=tiny",
            "model.backbone.weights=none",
            "model.roi_heads.cls_loss=seesaw",
            "model.roi_heads.cls_loss_args.normed_temperature=20",
            "model.roi_heads.fc_dim=16",
        ],
    )
    k = 5
    stats = CategoryStats.from_dict(
        {
            "cat_ids": list(range(1, k + 1)),
            "names": [f"c{i}" for i in range(k)],
            "image_count": [3] * k,
            "instance_count": [3] * k,
            "frequency": ["f"] * k,
            "num_images": 9,
        }
    )
    heads = build_model(cfg, stats).roi_heads
    layer = heads.box_head.predictor.cls_score
    assert isinstance(layer, NormedLinear)
    x = torch.randn(7, 16)
    # mmdet NormedLinear.forward with power 1, eps 1e-6
    w_ = layer.weight / (layer.weight.norm(dim=1, keepdim=True) + 1e-6)
    logits = F.linear(x / (x.norm(dim=1, keepdim=True) + 1e-6) * 20, w_, layer.bias)
    assert torch.allclose(layer(x), logits, atol=1e-6)
    obj = F.softmax(logits[:, -2:], dim=-1)
    expected = F.softmax(logits[:, :-2], dim=-1) * obj[:, [0]]  # mmdet SeesawLoss.get_activation[:, :K]
    assert torch.allclose(heads.box.scores(layer(x)), expected, atol=1e-6)
