"""``model.backbone.weights`` by name: torchvision:// and timm:// from the libraries' own caches, ``none``
said explicitly, an empty value refused, and offline one line naming the file to place and where.

The caches are pre-filled in temporary TORCH_HOME / HF_HOME folders with state dicts of the right keys;
LVISCTL_OFFLINE / HF_HUB_OFFLINE keep every test off the network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from lvisctl.config import load_config
from lvisctl.engine.init_weights import scratch_backbone
from lvisctl.errors import LvisctlError
from lvisctl.modeling.backbones import build_trunk
from lvisctl.modeling.weight_sources import resolve_weights

R18_V1 = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1 file name


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("LVISCTL_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def _backbone(*overrides: str):
    base = ["model.backbone.norm=bn", "model.backbone.freeze_at=0"]
    return load_config(None, [*base, *overrides]).model.backbone


def _fill_torch_hub(tmp_path: Path) -> dict:
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    target = tmp_path / "torch" / "hub" / "checkpoints" / R18_V1
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    return state


def _fill_hf_cache(tmp_path: Path, repo: str, state: dict) -> Path:
    from safetensors.torch import save_file

    folder = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_torchvision_name_loads_the_cached_imagenet_file(tmp_path):
    state = _fill_torch_hub(tmp_path)
    assert resolve_weights("torchvision://resnet18") == tmp_path / "torch" / "hub" / "checkpoints" / R18_V1
    trunk = build_trunk(
        _backbone("model.backbone.name=resnet18", "model.backbone.weights=torchvision://resnet18")
    )
    assert torch.equal(trunk.stem.conv1.weight, state["conv1.weight"])
    assert torch.equal(trunk.stages[3][1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert "loaded" in trunk.weights_note and R18_V1 in trunk.weights_note


def test_timm_tag_loads_the_hugging_face_cache_entry(tmp_path):
    import timm

    torch.manual_seed(4)
    full = timm.create_model("resnest50d", pretrained=False).state_dict()  # with its classifier (fc.*)
    cached = _fill_hf_cache(tmp_path, "timm/resnest50d.in1k", full)
    assert resolve_weights("timm://resnest50d") == cached
    trunk = build_trunk(
        _backbone("model.backbone.name=resnest50", "model.backbone.weights=timm://resnest50d")
    )
    assert torch.equal(trunk.body.layer3[0].conv2.conv.weight, full["layer3.0.conv2.conv.weight"])
    assert "model.safetensors" in trunk.weights_note


def test_offline_says_which_file_to_place_and_where(tmp_path):
    with pytest.raises(LvisctlError) as err:
        resolve_weights("torchvision://resnet50")
    msg = str(err.value)
    assert "\n" not in msg and "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in msg
    with pytest.raises(LvisctlError) as err:
        resolve_weights("timm://resnest101e")
    msg = str(err.value)
    assert "\n" not in msg and "model.safetensors" in msg and "timm/resnest101e.in1k" in msg
    assert str(tmp_path / "hf" / "hub") in msg


def test_enum_member_and_unknown_names():
    with pytest.raises(LvisctlError, match="resnet50-11ad3fa6.pth"):  # IMAGENET1K_V2, not cached here
        resolve_weights("torchvision://resnet50.imagenet1k_v2")
    with pytest.raises(LvisctlError, match="no weights 'IMAGENET9'"):
        resolve_weights("torchvision://resnet50.IMAGENET9")
    with pytest.raises(LvisctlError, match="torchvision has no model 'resnet49'"):
        resolve_weights("torchvision://resnet49")


def test_none_is_said_explicitly_and_empty_is_refused():
    assert resolve_weights("none") is None
    with pytest.raises(LvisctlError, match="weights=none"):
        resolve_weights("")
    # training a resnet from nothing needs the word: an empty value no longer trains from scratch silently
    with pytest.raises(LvisctlError, match="model.backbone.weights: empty"):
        scratch_backbone(load_config(None, ["model.backbone.weights="]), has_init=False)
    cfg, note = scratch_backbone(load_config(None, ["model.backbone.weights=none"]), has_init=False)
    assert cfg.model.backbone.norm == "bn" and "weights=none" in note
    tiny = build_trunk(_backbone("model.backbone.name=tiny", "model.backbone.weights=none"))
    assert tiny.weights_note == ""


def test_paper_stage1_configs_name_their_imagenet_weights():
    assert load_config("stage1/r50_baseline").model.backbone.weights == "torchvision://resnet50"
    assert load_config("stage1/htc_r50_da_eql_rfs").model.backbone.weights == "torchvision://resnet50"
    assert load_config("stage1/s101_da_eql_rfs").model.backbone.weights == "timm://resnest101e"
    assert (
        load_config("stage1/htc_s200_da_eql_rfs_tricks_st_ib").model.backbone.weights == "timm://resnest200e"
    )


def test_a_training_start_resolves_named_weights_before_anything_loads(tmp_path):
    cfg = load_config(None, ["model.backbone.weights=torchvision://resnet50"])
    with pytest.raises(LvisctlError, match="resnet50-0676ba61.pth"):  # offline, not cached
        scratch_backbone(cfg, has_init=False)
    kept, note = scratch_backbone(cfg, has_init=True)  # stage 2: weights come from the checkpoint
    assert note is None and kept.model.backbone.weights == "torchvision://resnet50"
