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
    # the flat name of older configs and the module path name the same part
    assert frozen_config_keys(["roi_heads.mask.head"]) == frozen_config_keys(["roi_heads.mask_head"])
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


def test_trained_heads_a_config_reshapes_stop_the_start_unless_partial_is_allowed():
    """Stage 2 (gs_hm switches: BAGS, Eq. 1, balanced loss, boundary) on a stage 1 of other head widths:
    the trainable box and mask heads the checkpoint has would be thrown away; stop with the keys named.
    The classifier (its width set by BAGS) and new modules (the boundary head) may still start fresh."""
    from lvisctl.engine.init_weights import changed_architecture
    from tests.helpers.model import TINY, tiny_model

    stage1 = tiny_model("model.roi_heads.fc_dim=64", "model.mask_head.conv_dim=16").state_dict()
    gs_hm = [
        "model.roi_heads.cls_loss=bags",
        "model.mask_head.level_assign=eq1",
        "model.mask_head.boundary=true",
    ]
    wider = tiny_model(*gs_hm, "model.roi_heads.fc_dim=96", "model.mask_head.conv_dim=24")
    changed = changed_architecture(
        load_config(None, [*TINY, *gs_hm, "model.roi_heads.fc_dim=96", "model.mask_head.conv_dim=24"]),
        load_config(None, [*TINY, "model.roi_heads.fc_dim=64", "model.mask_head.conv_dim=16"]).to_dict(),
    )
    assert changed == [
        "model.roi_heads.fc_dim: 64 -> 96",
        "model.mask_head.conv_dim: 16 -> 24",
        "model.mask_head.boundary: False -> True",
    ]
    with pytest.raises(LvisctlError) as err:
        load_init_weights(
            wider, stage1, source="stage1_final.pt", frozen=["backbone", "rpn"], changed=changed
        )
    msg = str(err.value)
    assert msg.startswith("stage1_final.pt: 12 trained tensors would be thrown away") and "\n" not in msg
    assert "(model.roi_heads.fc_dim: 64 -> 96; model.mask_head.conv_dim: 16 -> 24;" in msg
    assert "roi_heads.box.head.mlp.fc6.weight: (64, 1568) in the checkpoint, (96, 1568) in the model" in msg
    assert "and 9 more" in msg and "train.init_allow_partial=true" in msg
    report = load_init_weights(
        wider, stage1, source="stage1_final.pt", frozen=["backbone", "rpn"], allow_partial=True
    )
    assert any(m.startswith("roi_heads.box.head") for m in report.fresh)
    same = tiny_model(*gs_hm, "model.roi_heads.fc_dim=64", "model.mask_head.conv_dim=16")
    report = load_init_weights(same, stage1, source="stage1_final.pt", frozen=["backbone", "rpn"])
    assert not any(m.startswith(("roi_heads.box.head.fc", "roi_heads.mask.head.convs")) for m in report.fresh)
    assert any("cls_score" in m for m in report.fresh)  # BAGS' classifier: reshaped by design


def _stage1_checkpoint(run, *overrides: str, phase: str = "stage1", iteration: int = 1):
    from lvisctl.engine.checkpoint import save_checkpoint

    cfg = load_config(None, list(overrides))
    state = {"model": {}, "config": cfg.to_dict(), "category_stats": {}, "stage": 1, "phase": phase}
    return save_checkpoint(run, {**state, "iteration": iteration, "epoch": 0, "final": True})


def test_finetune_bags_takes_the_test_settings_of_its_stage1_checkpoint(tmp_path):
    """A stage 1 trained and tested at 128 px is fine-tuned with the stage-2 config (800 px by default):
    the inference keys that config leaves at the default come from the checkpoint; set ones win."""
    from lvisctl.config import CONFIG_ROOT
    from lvisctl.engine.checkpoint import Phase
    from lvisctl.engine.init_weights import prepare_config
    from lvisctl.rundir import RunDir

    run = RunDir(tmp_path / "run")
    _stage1_checkpoint(run, "inference.scales=[128]", "inference.max_size=213", "inference.score_thresh=0.05")
    recipe = CONFIG_ROOT / "stage2" / "finetune_bags.yaml"
    cfg, notes, init = prepare_config(load_config(recipe), run, Phase(2, "finetune_bags"))
    assert init is not None and list(cfg.inference.scales) == [128] and cfg.inference.max_size == 213
    assert any(n.startswith("test settings taken from checkpoints/stage1_final.pt") for n in notes)
    assert "inference.scales=[128]" in " ".join(notes)
    chosen = load_config(recipe, ["inference.scales=[160]"])
    cfg, _, _ = prepare_config(chosen, run, Phase(2, "finetune_bags"))
    assert list(cfg.inference.scales) == [160] and cfg.inference.max_size == 213
