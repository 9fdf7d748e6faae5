"""Which config keys a frozen part inherits from its checkpoint; the from-scratch trunk rule; loud loads."""

import pytest
import torch
from torch import nn

from lvisctl.config import load_config
from lvisctl.engine.init_weights import (
    frozen_config_keys,
    inherit_frozen_architecture,
    load_init_weights,
    scratch_backbone,
)
from lvisctl.errors import LvisctlError


def test_frozen_parts_map_to_the_keys_that_shape_them():
    keys = frozen_config_keys(["backbone", "rpn"])
    assert {"model.backbone", "model.fpn", "model.pixel_mean", "model.pixel_std", "model.rpn"} <= set(keys)
    assert not any(k.startswith("model.mask_head") for k in keys)
    assert "model.mask_head.conv_dim" in frozen_config_keys(["roi_heads.mask_head"])
    assert frozen_config_keys(["backbone.fpn"]) == ["model.fpn"]


def test_defaults_are_taken_from_the_checkpoint_and_contradictions_stop():
    saved = load_config(
        None, ["model.backbone.name=tiny", "model.fpn.out_channels=64", "model.pixel_std=[1,1,1]"]
    )
    stage2 = load_config(None, ["model.roi_heads.cls_loss=bags"])
    cfg, taken = inherit_frozen_architecture(stage2, saved.to_dict(), ["backbone", "rpn"], source="s1.pt")
    assert cfg.model.backbone.name == "tiny" and cfg.model.fpn.out_channels == 64
    assert cfg.model.pixel_std == [1, 1, 1] and cfg.model.roi_heads.cls_loss == "bags"
    assert "model.backbone.name='tiny'" in taken and len(taken) == 3
    wrong = load_config(None, ["model.fpn.out_channels=128"])
    with pytest.raises(
        LvisctlError, match=r"s1.pt: model.fpn.out_channels=128 contradicts the checkpoint \(64\)"
    ):
        inherit_frozen_architecture(wrong, saved.to_dict(), ["backbone"], source="s1.pt")
    # a part that is not frozen may differ freely
    cfg, taken = inherit_frozen_architecture(wrong, saved.to_dict(), ["rpn"], source="s1.pt")
    assert cfg.model.fpn.out_channels == 128 and taken == []


def test_a_trunk_without_weights_gets_trainable_norms_and_no_frozen_stages():
    cfg, note = scratch_backbone(load_config(None, ["model.backbone.weights=none"]), has_init=False)
    assert cfg.model.backbone.norm == "bn" and cfg.model.backbone.freeze_at == 0
    assert note.startswith("no pretrained weights") and "frozen_bn" in note
    kept, note = scratch_backbone(load_config(None), has_init=True)  # weights come from a checkpoint
    assert kept.model.backbone.norm == "frozen_bn" and note is None
    kept, note = scratch_backbone(load_config(None, ["model.backbone.weights=r50.pth"]), has_init=False)
    assert kept.model.backbone.freeze_at == 2 and note is None


def _net(out=3):
    m = nn.Module()
    m.backbone = nn.Conv2d(3, 4, 3)
    m.head = nn.Linear(4, out)
    return m


def test_frozen_tensors_must_load_and_fresh_ones_are_listed():
    src = _net(3)
    dst = _net(5)
    report = load_init_weights(dst, src.state_dict(), source="a.pt", frozen=["backbone"], allow_partial=True)
    assert (report.loaded, report.total, report.fresh) == (2, 4, ["head"])
    assert torch.equal(dst.backbone.weight, src.backbone.weight)
    with pytest.raises(LvisctlError, match=r"a.pt: 2 frozen tensors do not load \(e.g. head.weight: shape"):
        load_init_weights(_net(5), src.state_dict(), source="a.pt", frozen=["head"], allow_partial=True)
    with pytest.raises(LvisctlError, match="another category set"):
        load_init_weights(_net(3), src.state_dict(), source="a.pt", same_classes=False)


def test_a_stage1_of_another_head_type_is_refused_unless_partial_is_allowed():
    from lvisctl.config import load_config
    from lvisctl.engine.init_weights import check_head_type
    from lvisctl.errors import LvisctlError

    saved = {"model": {"roi_heads": {"type": "htc"}}}
    standard = load_config(None)
    with pytest.raises(LvisctlError, match="model.roi_heads.type is 'htc' there but 'standard'"):
        check_head_type(standard, saved, "checkpoints/stage1_final.pt")
    check_head_type(load_config(None, ["train.init_allow_partial=true"]), saved, "x.pt")
    check_head_type(load_config(None, ["model.roi_heads.type=htc"]), saved, "x.pt")
    check_head_type(standard, {"model": {"roi_heads": {}}}, "old.pt")  # before the key existed: standard
