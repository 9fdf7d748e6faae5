"""Checkpoint import from mmdet (real key names and shapes, fixture) and detectron2 (key names from its
model code), the weight conventions (numeric), the safe reader, and one-line errors that write nothing."""

import json
import math
import os
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lvisctl.checkpoint_import import import_checkpoint
from lvisctl.checkpoint_import.layouts import (
    bg_last_to_first,
    flip_input_channels,
    pixel_overrides,
    with_bg_slot,
)
from lvisctl.checkpoint_import.reader import read_checkpoint_file
from lvisctl.checkpoint_import.unpickler import Skipped
from lvisctl.cli.app import app
from lvisctl.config import load_config
from lvisctl.engine.checkpoint import load_checkpoint
from lvisctl.errors import LvisctlError
from lvisctl.modeling.build import build_rpn
from tests.helpers.checkpoint_files import _d2_pkl, _mmdet_file


# ------------------------------------------------------------------------------------------ mmdet
def test_mmdet_r50_coco_maps_every_weight_and_reinitialises_the_coco_classifier(tmp_path):
    path, state = _mmdet_file(tmp_path, "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")
    result = import_checkpoint(path, tmp_path / "run")  # no training data: LVIS v1 targets
    r = result.report
    assert r.framework == "mmdet" and r.classifier.startswith("re-initialised (COCO (80 classes) -> 1203")
    assert r.groups["trunk"] == {"loaded": 265, "re-initialised": 0, "unused": 53}
    assert r.groups["fpn"]["loaded"] == 16 and r.groups["rpn"]["loaded"] == 6
    assert r.groups["box head"] == {"loaded": 4, "re-initialised": 4, "unused": 0}
    assert r.groups["mask head"] == {"loaded": 10, "re-initialised": 2, "unused": 0}
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage1_final.pt")
    m = ckpt["config"]["model"]
    assert m["rpn"]["anchor_round"] is False and m["roi_heads"]["aligned"] is True
    assert m["roi_heads"]["sampling_ratio"] == 0 and m["backbone"]["name"] == "resnet50"
    assert m["pixel_mean"] == pytest.approx([0.485, 0.456, 0.406]) and m["pixel_std"][0] == pytest.approx(
        0.229
    )
    w = ckpt["model"]
    assert torch.equal(w["backbone.fpn.inner_blocks.2.0.weight"], state["neck.lateral_convs.2.conv.weight"])
    assert torch.equal(
        w["roi_heads.mask.head.convs.6.weight"], state["roi_head.mask_head.convs.3.conv.weight"]
    )
    assert len(ckpt["category_stats"]["cat_ids"]) == 1203


@pytest.mark.parametrize(
    ("config", "trunk"),
    [
        ("lvis/mask-rcnn_r101_fpn_sample1e-3_ms-1x_lvis-v1.py", "resnet101"),
        ("lvis/mask-rcnn_x101-64x4d_fpn_sample1e-3_ms-1x_lvis-v1.py", "resnext101_64x4d"),
    ],
)
def test_mmdet_lvis_zoo_layout_keeps_the_classifier(tmp_path, config, trunk):
    path, state = _mmdet_file(tmp_path, config, meta={"dataset_meta": {"classes": None}})
    r = import_checkpoint(path, tmp_path / "run").report
    assert r.classifier == "kept" and r.classes == "LVIS v1 (1,203 classes)"
    assert all(g["re-initialised"] == 0 for g in r.groups.values())
    w = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage1_final.pt")["model"]
    # background moves from the last classifier row to the first; fg rows keep their order
    cls = state["roi_head.bbox_head.fc_cls.weight"]
    assert torch.equal(w["roi_heads.box.head.predictor.cls_score.weight"][0], cls[-1])
    assert torch.equal(w["roi_heads.box.head.predictor.cls_score.weight"][1:], cls[:-1])
    assert torch.equal(
        w["roi_heads.box.head.predictor.bbox_pred.weight"][4:], state["roi_head.bbox_head.fc_reg.weight"]
    )
    assert r.overrides["model.backbone.name"] == trunk


def test_mmdet_meta_objects_are_skipped_never_called(tmp_path):
    class Evil:  # what a malicious meta could hold: unpickling it would run a shell command
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path, _ = _mmdet_file(
        tmp_path, "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", meta={"hook": Evil(), "seed": 1}
    )
    loaded = read_checkpoint_file(path)
    assert loaded.kind == "torch-restricted" and loaded.skipped == ["posix.system"]
    assert isinstance(loaded.obj["meta"]["hook"], Skipped) and loaded.obj["meta"]["seed"] == 1
    assert not (tmp_path / "pwned").exists()
    r = import_checkpoint(path, tmp_path / "run").report
    assert r.skipped_objects == ["posix.system"] and not (tmp_path / "pwned").exists()


def test_mmdet_meta_config_text_sets_caffe_conventions(tmp_path):
    cfg_text = "model = dict(data_preprocessor=dict(mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], "
    cfg_text += "bgr_to_rgb=False), backbone=dict(style='caffe'))"
    path, state = _mmdet_file(tmp_path, "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py", meta={"cfg": cfg_text})
    r = import_checkpoint(path, tmp_path / "run").report
    assert r.overrides["model.backbone.stride_in_1x1"] is True
    assert r.overrides["model.pixel_mean"] == pytest.approx([123.675 / 255, 116.28 / 255, 103.53 / 255])
    w = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage1_final.pt")["model"]
    assert torch.equal(w["backbone.body.stem.conv1.weight"], state["backbone.conv1.weight"].flip(1))


# ------------------------------------------------------------------------------------------ detectron2


def test_detectron2_lvis_pkl(tmp_path):
    path, state = _d2_pkl(tmp_path, depth=101)
    r = import_checkpoint(path, tmp_path / "run").report
    assert r.framework == "detectron2" and r.classifier == "kept"
    assert sum(g["unused"] for g in r.groups.values()) == 0
    assert all(g["re-initialised"] == 0 for g in r.groups.values())
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage1_final.pt")
    m, w = ckpt["config"]["model"], ckpt["model"]
    assert m["backbone"]["name"] == "resnet101" and m["backbone"]["stride_in_1x1"] is True
    assert m["pixel_std"] == pytest.approx([1 / 255] * 3)
    assert m["pixel_mean"] == pytest.approx([123.675 / 255, 116.28 / 255, 103.53 / 255])
    stem = torch.from_numpy(state["backbone.bottom_up.stem.conv1.weight"])
    assert torch.equal(w["backbone.body.stem.conv1.weight"], stem.flip(1))
    sc = state["backbone.bottom_up.res3.0.shortcut.norm.running_var"]
    assert torch.equal(w["backbone.body.stages.1.0.downsample.1.running_var"], torch.from_numpy(sc))


def test_detectron2_pth_rgb_coco(tmp_path):
    state = {k: torch.from_numpy(v) for k, v in _d2_pkl(tmp_path, num_classes=80)[1].items()}
    state["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    state["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 90000}, path)
    r = import_checkpoint(path, tmp_path / "run", input_format="RGB", stride_in_1x1=False).report
    assert r.classifier.startswith("re-initialised (COCO (80 classes)")
    assert r.overrides["model.pixel_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert r.overrides["model.backbone.stride_in_1x1"] is False


# ------------------------------------------------------------------------------------------ conventions
def _d2_apply_deltas(deltas, boxes, weights=(10.0, 10.0, 5.0, 5.0), clamp=math.log(1000.0 / 16)):
    """detectron2's ``Box2BoxTransform.apply_deltas`` (box_regression.py), written out."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = (deltas[:, 2] / ww).clamp(max=clamp), (deltas[:, 3] / wh).clamp(max=clamp)
    px, py = dx * widths + ctr_x, dy * heights + ctr_y
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=1)


def test_detectron2_box_delta_decodes_to_the_same_box():
    from torchvision.models.detection._utils import BoxCoder

    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 300.0]])
    deltas = torch.tensor([[1.0, -2.0, 0.5, -0.3], [0.2, 0.1, 60.0, 0.0]])  # 60: the clamp is hit
    weights = load_config(None, []).model.roi_heads.bbox_reg_weights
    mine = BoxCoder(tuple(weights)).decode(deltas, [boxes])[:, 0]
    torch.testing.assert_close(mine, _d2_apply_deltas(deltas, boxes))
    # hand-computed first box: centre (30 + 0.1 * 40, 50 - 0.2 * 60), size (40 e^0.1, 60 e^-0.06)
    w, h = 40 * math.exp(0.1), 60 * math.exp(-0.06)
    torch.testing.assert_close(mine[0], torch.tensor([34 - w / 2, 38 - h / 2, 34 + w / 2, 38 + h / 2]))


def test_bgr_weights_give_the_same_activations_on_rgb_input():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 3, 3, 3, generator=g)
    rgb01 = torch.rand(1, 3, 16, 16, generator=g)
    mean_bgr, std_bgr = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)
    d2_input = (rgb01.flip(1) * 255 - torch.tensor(mean_bgr).view(1, 3, 1, 1)) / torch.tensor(std_bgr).view(
        1, 3, 1, 1
    )
    conv = pixel_overrides(mean_bgr, std_bgr, bgr=True)
    mine = (rgb01 - torch.tensor(conv["model.pixel_mean"]).view(1, 3, 1, 1)) / torch.tensor(
        conv["model.pixel_std"]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(mine, flip_input_channels(weight)),
        torch.nn.functional.conv2d(d2_input, weight),
        atol=1e-4,
        rtol=1e-4,
    )


def test_background_last_classifier_gives_the_same_class_scores():
    logits_src = torch.randn(5, 4)  # 3 classes + background last
    probs_src = logits_src.softmax(-1)[:, :3]
    probs_mine = bg_last_to_first(logits_src.T).T.softmax(-1)[:, 1:]
    torch.testing.assert_close(probs_mine, probs_src)


def test_class_agnostic_outputs_repeat_for_every_class():
    agnostic = torch.randn(4, 7)
    specific = with_bg_slot(agnostic, 4, num_classes=3)
    assert specific.shape == (16, 7) and all(
        torch.equal(specific[4 * c : 4 * c + 4], agnostic) for c in range(4)
    )
    per_class = torch.randn(12, 7)
    padded = with_bg_slot(per_class, 4, num_classes=3)
    assert torch.equal(padded[:4], torch.zeros(4, 7)) and torch.equal(padded[4:], per_class)


def test_unrounded_anchors_are_detectron2s_cell_anchors():
    cfg = load_config(None, ["model.rpn.anchor_round=false"])
    cells = build_rpn(cfg.model.rpn, 256).anchor_generator.generate_anchors((32,), (0.5, 1.0, 2.0))
    expected = []
    for ratio in (0.5, 1.0, 2.0):  # detectron2 generate_cell_anchors: w = sqrt(area / ratio), h = ratio * w
        w = math.sqrt(32 * 32 / ratio)
        h = ratio * w
        expected.append([-w / 2, -h / 2, w / 2, h / 2])
    torch.testing.assert_close(cells, torch.tensor(expected))
    rounded = build_rpn(load_config(None, []).model.rpn, 256).anchor_generator.generate_anchors(
        (32,), (0.5, 1.0, 2.0)
    )
    assert torch.equal(rounded, torch.tensor(expected).round())


def test_stride_in_1x1_moves_the_stride():
    from lvisctl.modeling.backbones import build_trunk

    trunk = build_trunk(load_config(None, ["model.backbone.stride_in_1x1=true"]).model.backbone)
    block = trunk.stages[1][0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert [f.shape[-1] for f in trunk(torch.zeros(1, 3, 64, 64))] == [16, 8, 4, 2]


# ------------------------------------------------------------------------------------------ errors
def _cli(*args):
    return CliRunner().invoke(app, ["import-checkpoint", *map(str, args)])


@pytest.mark.parametrize("kind", ["truncated", "random", "json", "resnet"])
def test_corrupt_or_foreign_file_is_one_line_and_writes_nothing(tmp_path, kind):
    path = tmp_path / "model.pth"
    if kind == "truncated":
        torch.save({"model": {"a": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "json":
        path.write_text(json.dumps({"model": {"a": 1}}))
    else:  # a classifier, not a detector: unknown layout, listing what it has
        torch.save(
            {
                "conv1.weight": torch.zeros(1),
                "layer1.0.conv1.weight": torch.zeros(1),
                "fc.bias": torch.zeros(1),
            },
            path,
        )
    run = tmp_path / "run"
    result = _cli(path, "--run-dir", run)
    assert isinstance(result.exception, LvisctlError)  # main() prints it as one "error:" line, exit 2
    with pytest.raises(LvisctlError) as err:
        import_checkpoint(path, run)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    if kind == "resnet":
        assert "unknown checkpoint layout (key prefixes: " in str(err.value) and "layer1.0 (1)" in str(
            err.value
        )
    assert not (run / "checkpoints").exists()


def test_wrong_framework_and_existing_checkpoint(tmp_path):
    path, _ = _mmdet_file(tmp_path, "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")
    with pytest.raises(LvisctlError, match="not a detectron2 Mask R-CNN layout"):
        import_checkpoint(path, tmp_path / "run", framework="detectron2")
    import_checkpoint(path, tmp_path / "run")
    with pytest.raises(LvisctlError, match="already exists"):
        import_checkpoint(path, tmp_path / "run")
    with pytest.raises(LvisctlError, match="already an lvisctl checkpoint"):
        import_checkpoint(tmp_path / "run" / "checkpoints" / "stage1_final.pt", tmp_path / "run2")


def test_zip_without_data_pkl_is_refused(tmp_path):
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/other.txt", "hello")
    with pytest.raises(LvisctlError, match="not a readable torch checkpoint"):
        read_checkpoint_file(path)


def test_mmdet_htc_maps_onto_lvisctls_htc(tmp_path):
    if "type" not in load_config(None, []).model.roi_heads:
        pytest.skip("lvisctl's HTC (model.roi_heads.type: htc) is not in this build")
    path, state = _mmdet_file(tmp_path, "htc/htc-without-semantic_r50_fpn_1x_coco.py")
    r = import_checkpoint(path, tmp_path / "run").report
    assert (
        r.overrides["model.roi_heads.type"] == "htc" and r.overrides["model.roi_heads.cascade.class_agnostic"]
    )
    assert r.classifier.startswith("re-initialised (COCO (80 classes)")
    # mmdet's HTC: RoIAlign sampling_ratio 0 / aligned, SmoothL1 beta 1.0, masks averaged over the stages
    cascade = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage1_final.pt")["config"]["model"][
        "roi_heads"
    ]
    assert {
        k: cascade["cascade"][k] for k in ("aligned", "sampling_ratio", "smooth_l1_beta", "test_mask")
    } == {
        "aligned": True,
        "sampling_ratio": 0,
        "smooth_l1_beta": 1.0,
        "test_mask": "mean",
    }
    assert sum(g["unused"] for g in r.groups.values()) == 53  # num_batches_tracked only
    w = load_checkpoint(tmp_path / "run" / "checkpoints" / "stage1_final.pt")["model"]
    for s in range(3):  # class-agnostic box regression (4 outputs) loads whatever the classes
        assert torch.equal(
            w[f"roi_heads.stages.{s}.box.head.predictor.bbox_pred.weight"],
            state[f"roi_head.bbox_head.{s}.fc_reg.weight"],
        )
    assert torch.equal(
        w["roi_heads.stages.2.mask.head.conv_res.0.weight"],
        state["roi_head.mask_head.2.conv_res.conv.weight"],
    )


def test_mmdet_2x_zoo_meta_classes_and_config_text(tmp_path):
    names = [f"cat{i}" for i in range(1203)]
    cfg_text = "img_norm_cfg = dict(mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], to_rgb=False)"
    meta = {"CLASSES": names, "config": cfg_text}
    path, _ = _mmdet_file(tmp_path, "lvis/mask-rcnn_r101_fpn_sample1e-3_ms-1x_lvis-v1.py", meta=meta)
    r = import_checkpoint(path, tmp_path / "run").report
    assert r.overrides["model.pixel_std"] == pytest.approx([1 / 255] * 3)  # caffe-style BGR weights
    assert r.classifier.startswith("re-initialised")  # class names differ from the LVIS v1 table's
