"""Checkpoint files of other frameworks (mmdet .pth, detectron2 .pkl) with random weights under their real
key names and shapes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mmdet_mask_rcnn_keys.json"


def _fake_state(keys_shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in keys_shapes:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.01
    return out


def _mmdet_file(tmp_path, config, meta=None):
    state = _fake_state(json.loads(FIXTURE.read_text())[config])
    path = tmp_path / "mmdet.pth"
    torch.save({"state_dict": state, "meta": meta or {}}, path)
    return path, state


def detectron2_keys(depth=50, num_classes=1203):
    """Key names and shapes of detectron2's ``GeneralizedRCNN`` with ``build_resnet_fpn_backbone``,
    ``StandardRPNHead``, ``FastRCNNConvFCHead`` (2 fc) and ``MaskRCNNConvUpsampleHead`` (4 convs), as its
    ``modeling/backbone/{resnet,fpn}.py``, ``proposal_generator/rpn.py`` and ``roi_heads/*`` name them."""
    out = [("backbone.bottom_up.stem.conv1.weight", (64, 3, 7, 7))]
    norm = lambda p, c: [(f"{p}.norm.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")]  # noqa: E731
    out += norm("backbone.bottom_up.stem.conv1", 64)
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    in_ch = 64
    for s, n in enumerate(blocks):
        width, out_ch = 64 * 2**s, 256 * 2**s
        for i in range(n):
            p = f"backbone.bottom_up.res{s + 2}.{i}"
            if i == 0:
                out += [(f"{p}.shortcut.weight", (out_ch, in_ch, 1, 1)), *norm(f"{p}.shortcut", out_ch)]
            cin = in_ch if i == 0 else out_ch
            out += [(f"{p}.conv1.weight", (width, cin, 1, 1)), *norm(f"{p}.conv1", width)]
            out += [(f"{p}.conv2.weight", (width, width, 3, 3)), *norm(f"{p}.conv2", width)]
            out += [(f"{p}.conv3.weight", (out_ch, width, 1, 1)), *norm(f"{p}.conv3", out_ch)]
        in_ch = out_ch
    for lvl, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048), strict=True):
        out += [
            (f"backbone.fpn_lateral{lvl}.weight", (256, c, 1, 1)),
            (f"backbone.fpn_lateral{lvl}.bias", (256,)),
        ]
        out += [
            (f"backbone.fpn_output{lvl}.weight", (256, 256, 3, 3)),
            (f"backbone.fpn_output{lvl}.bias", (256,)),
        ]
    rpn = "proposal_generator.rpn_head"
    out += [(f"{rpn}.conv.weight", (256, 256, 3, 3)), (f"{rpn}.conv.bias", (256,))]
    out += [(f"{rpn}.objectness_logits.weight", (3, 256, 1, 1)), (f"{rpn}.objectness_logits.bias", (3,))]
    out += [(f"{rpn}.anchor_deltas.weight", (12, 256, 1, 1)), (f"{rpn}.anchor_deltas.bias", (12,))]
    out += [("roi_heads.box_head.fc1.weight", (1024, 12544)), ("roi_heads.box_head.fc1.bias", (1024,))]
    out += [("roi_heads.box_head.fc2.weight", (1024, 1024)), ("roi_heads.box_head.fc2.bias", (1024,))]
    k = num_classes
    out += [
        ("roi_heads.box_predictor.cls_score.weight", (k + 1, 1024)),
        ("roi_heads.box_predictor.cls_score.bias", (k + 1,)),
    ]
    out += [
        ("roi_heads.box_predictor.bbox_pred.weight", (4 * k, 1024)),
        ("roi_heads.box_predictor.bbox_pred.bias", (4 * k,)),
    ]
    for i in range(1, 5):
        out += [
            (f"roi_heads.mask_head.mask_fcn{i}.weight", (256, 256, 3, 3)),
            (f"roi_heads.mask_head.mask_fcn{i}.bias", (256,)),
        ]
    out += [
        ("roi_heads.mask_head.deconv.weight", (256, 256, 2, 2)),
        ("roi_heads.mask_head.deconv.bias", (256,)),
    ]
    out += [
        ("roi_heads.mask_head.predictor.weight", (k, 256, 1, 1)),
        ("roi_heads.mask_head.predictor.bias", (k,)),
    ]
    return out


def _d2_pkl(tmp_path, depth=50, num_classes=1203):
    state = {k: v.numpy() for k, v in _fake_state(detectron2_keys(depth, num_classes)).items()}
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as fh:  # the model zoo's format: numpy arrays in a plain pickle
        pickle.dump(
            {"model": state, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True},
            fh,
            protocol=2,
        )
    return path, state
