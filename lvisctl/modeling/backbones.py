"""Backbone trunks that return the C2-C5 feature maps (strides 4, 8, 16, 32) the FPN consumes.

* ResNet-18/50/101 from torchvision, optionally with deformable 3x3 convs (DCN, torchvision
  ``DeformConv2d``) in stages 3-5 (``model.backbone.dcn_stages``).
* ResNeSt-50/101/200/269 from timm (``resnest50d``, ``resnest101e``, ``resnest200e``, ``resnest269e``),
  optionally with DCN in the split-attention convs of stages 3-5.
* ``tiny``: a 4-stage BasicBlock ResNet with a configurable base width, for CPU runs trained from scratch.

The libraries never download on their own (``pretrained=False`` everywhere): ImageNet weights come from
``model.backbone.weights`` (``torchvision://NAME``, ``timm://TAG``, a local file, or ``none``; resolved by
``weight_sources``), loaded *before* norm layers are frozen so FrozenBN gets the file's statistics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import DeformConv2d, FrozenBatchNorm2d

from lvisctl.config import BackboneConfig
from lvisctl.errors import LvisctlError
from lvisctl.modeling.weight_sources import is_none, resolve_weights
from lvisctl.registry import BACKBONES

TORCHVISION_RESNETS = {"resnet18": 18, "resnet50": 50, "resnet101": 101}
# ResNeXt-101 as mmdet's X-101-32x4d / 64x4d (torchvision's Bottleneck with groups and width per group)
RESNEXTS = {"resnext101_32x4d": (32, 4), "resnext101_64x4d": (64, 4)}
TIMM_RESNESTS = {
    "resnest50": "resnest50d",
    "resnest101": "resnest101e",
    "resnest200": "resnest200e",
    "resnest269": "resnest269e",
}
NORMS = ("frozen_bn", "bn", "gn")


class DeformConv3x3(DeformConv2d):
    """A 3x3 deformable conv that predicts its own offsets (DCNv1, Dai et al. 2017).

    The offset conv is zero-initialised so the layer starts as the plain conv it replaces; its weight keys
    (``weight``) match the replaced ``nn.Conv2d``, so ImageNet weights of a plain ResNet load unchanged
    (only ``offset.*`` stays freshly initialised).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            kernel_size=3,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
        self.offset = nn.Conv2d(conv.in_channels, 2 * 9, 3, stride=conv.stride, padding=conv.padding)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        # deform_conv2d has no half kernel: run it in the offset conv's dtype under autocast.
        offset = self.offset(x)
        return super().forward(x.to(offset.dtype), offset)


class Trunk(nn.Module):
    """``stem`` + ``stages`` (4 modules); ``forward`` returns ``[C2, C3, C4, C5]``."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int]) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class TimmTrunk(nn.Module):
    """A timm ``features_only`` model (already returns C2-C5) behind the ``Trunk`` interface."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.body = model
        self.out_channels = list(model.feature_info.channels())

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))

    def stage_modules(self) -> list[list[nn.Module]]:
        b = self.body
        return [[b.conv1, b.bn1, b.act1, b.maxpool], [b.layer1], [b.layer2], [b.layer3], [b.layer4]]


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "gn":
        return partial(nn.GroupNorm, 32)
    return nn.BatchNorm2d  # frozen_bn: converted after the weights are loaded


def _torchvision_resnet(
    name: str, norm: str, dcn_stages: list[int], stride_in_1x1: bool = False
) -> nn.Module:
    if name in RESNEXTS:
        groups, width = RESNEXTS[name]
        model = torchvision.models.resnet101(
            weights=None, norm_layer=_norm_layer(norm), groups=groups, width_per_group=width
        )
    else:
        ctor = getattr(torchvision.models, f"resnet{TORCHVISION_RESNETS[name]}")
        model = ctor(weights=None, norm_layer=_norm_layer(norm))
    if stride_in_1x1:  # MSRA / caffe-style weights (detectron2's R-50.pkl): stride 2 in the 1x1 conv
        for layer in (model.layer2, model.layer3, model.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    for stage in dcn_stages:
        layer = getattr(model, f"layer{stage - 1}")  # stage 3 = res3 = torchvision layer2
        for block in layer:
            block.conv2 = DeformConv3x3(block.conv2)
    return model


def _resnest_dcn(model: nn.Module, dcn_stages: list[int]) -> None:
    """DCN in ResNeSt as mmdet does: the split-attention block's grouped 3x3 conv (``conv2.conv``) becomes
    deformable (paper Table 1: "DCN when using ResNeSt101"); the attention itself is unchanged."""
    for stage in dcn_stages:
        for block in getattr(model, f"layer{stage - 1}"):  # stage 3 = res3 = timm layer2
            block.conv2.conv = DeformConv3x3(block.conv2.conv)


def _resnet_trunk(model: nn.Module) -> Trunk:
    stem = nn.Sequential(
        OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool)
    )
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    channels = [_stage_channels(s) for s in stages]
    return Trunk(stem, stages, channels)


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    conv = last.conv3 if hasattr(last, "conv3") else last.conv2
    return conv.out_channels


def _tiny_trunk(width: int, norm: str) -> Trunk:
    """Stem (two stride-2 3x3 convs) + one BasicBlock per stage with widths w, 2w, 4w, 8w."""
    # GroupNorm groups scale with the width so every group keeps >= 4 channels at small widths.
    norm_layer = partial(nn.GroupNorm, min(32, max(1, width // 4))) if norm == "gn" else nn.BatchNorm2d
    stem = nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1, bias=False),
        norm_layer(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, 2, 1, bias=False),
        norm_layer(width),
        nn.ReLU(inplace=True),
    )
    chans = [width, 2 * width, 4 * width, 8 * width]
    stages, prev = [], width
    for i, ch in enumerate(chans):
        stride = 1 if i == 0 else 2
        down = None
        if stride != 1 or prev != ch:
            down = nn.Sequential(nn.Conv2d(prev, ch, 1, stride, bias=False), norm_layer(ch))
        stages.append(nn.Sequential(BasicBlock(prev, ch, stride, down, norm_layer=norm_layer)))
        prev = ch
    return Trunk(stem, stages, chans)


def load_backbone_weights(module: nn.Module, path: str, name: str) -> str:
    """Load an ImageNet state dict from ``path`` into ``module``; one-line LvisctlError on any mismatch.

    Accepts a raw state dict or one under ``state_dict`` / ``model``. Classifier keys (``fc.*``) are
    ignored; DCN offset convs may be missing (they start at zero by design). Returns the line that says
    what loaded and what stayed at its initialisation.
    """
    file = Path(path)
    if not file.is_file():
        raise LvisctlError(f"{file}: backbone weights file not found (model.backbone.weights)")
    try:
        state = _read_state(file)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LvisctlError(f"{file}: cannot read backbone weights ({type(err).__name__})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise LvisctlError(f"{file}: not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("fc.", "head."))}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(("fc.", "head."))}
    missing = [k for k in own if k not in state and ".offset." not in k and "num_batches_tracked" not in k]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (missing + unexpected + wrong)[:2]
        raise LvisctlError(
            f"{file}: does not match backbone {name} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} wrong-shape keys, e.g. {', '.join(detail)})"
        )
    # strict=False only for what was checked above to be absent by design: the classifier (dropped on
    # both sides), DCN offset convs (zero-initialised, ImageNet has none) and BN step counters
    module.load_state_dict(state, strict=False)
    offsets = sum(1 for k in own if k not in state and ".offset." in k)
    counters = sum(1 for k in own if k not in state and "num_batches_tracked" in k)
    kept = [f"{offsets} DCN offset tensors (zero, by design)"] if offsets else []
    kept += [f"{counters} BatchNorm step counters"] if counters else []
    line = f"{file}: loaded {len(state)} of {len(own)} backbone tensors ({name})"
    return line + (f"; left at their initialisation: {', '.join(kept)}" if kept else "")


def _read_state(file: Path) -> object:
    if file.suffix == ".safetensors":  # timm's Hugging Face files (no pickle at all)
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    return torch.load(file, map_location="cpu", weights_only=True)


def _load_named(module: nn.Module, spec: str, name: str) -> str:
    """Load what ``model.backbone.weights`` names; "" (a model whose weights come from a checkpoint, see
    ``engine.init_weights.model_build_config``) and ``none`` load nothing."""
    if not str(spec or "").strip() or is_none(spec):
        return ""
    file = resolve_weights(spec)
    return load_backbone_weights(module, str(file), name) if file is not None else ""


def _freeze(modules: list[list[nn.Module]], freeze_at: int) -> None:
    """detectron2's ``freeze_at``: 0 trains everything, 1 freezes the stem, k freezes stem + stages 2..k."""
    for group in modules[:freeze_at]:
        for m in group:
            for p in m.parameters():
                p.requires_grad_(False)


class ResNetTrunk:
    """torchvision ResNet-18/50/101 and ResNeXt-101 (``model.backbone.name``), optionally with DCN."""

    @staticmethod
    def from_config(bcfg: BackboneConfig) -> tuple[nn.Module, str, list[list[nn.Module]]]:
        """(trunk, what the weights file did, the freeze groups stem, res2..res5)."""
        name, dcn = bcfg.name, [int(s) for s in bcfg.dcn_stages]
        model = _torchvision_resnet(name, bcfg.norm, dcn, bool(bcfg.get("stride_in_1x1", False)))
        weights_note = _load_named(model, bcfg.weights, name)
        trunk = _resnet_trunk(model)
        return trunk, weights_note, [[trunk.stem], *[[s] for s in trunk.stages]]


class ResNeStTrunk:
    """timm ResNeSt-50/101/200/269 (``features_only``), optionally with DCN in the split-attention convs."""

    @staticmethod
    def from_config(bcfg: BackboneConfig) -> tuple[nn.Module, str, list[list[nn.Module]]]:
        import timm

        name = bcfg.name
        model = timm.create_model(
            TIMM_RESNESTS[name],
            pretrained=False,
            features_only=True,
            out_indices=(1, 2, 3, 4),
            norm_layer="groupnorm" if bcfg.norm == "gn" else "batchnorm2d",  # timm's names (32 groups)
        )
        _resnest_dcn(model, [int(s) for s in bcfg.dcn_stages])
        weights_note = _load_named(model, bcfg.weights, name)
        trunk = TimmTrunk(model)
        return trunk, weights_note, trunk.stage_modules()


class TinyTrunk:
    """The CPU demo's small BasicBlock trunk, trained from scratch (no ImageNet weights)."""

    @staticmethod
    def from_config(bcfg: BackboneConfig) -> tuple[nn.Module, str, list[list[nn.Module]]]:
        if str(bcfg.weights or "").strip() and not is_none(bcfg.weights):
            raise LvisctlError("model.backbone.weights: the tiny backbone has no ImageNet weights; say none")
        if [int(s) for s in bcfg.dcn_stages]:
            raise LvisctlError(
                "model.backbone.dcn_stages: DCN is available for the resnets and resnests, not tiny"
            )
        trunk = _tiny_trunk(int(bcfg.tiny_width), bcfg.norm)
        return trunk, "", [[trunk.stem], *[[s] for s in trunk.stages]]


_BACKBONE_HELP = {
    "resnet18": (ResNetTrunk, "torchvision ResNet-18"),
    "resnet50": (ResNetTrunk, "torchvision ResNet-50 (Table 1's R50)"),
    "resnet101": (ResNetTrunk, "torchvision ResNet-101"),
    "resnext101_32x4d": (
        ResNetTrunk,
        "torchvision-layout ResNeXt-101 32x4d (imported mmdet/detectron2 X-101 weights)",
    ),
    "resnext101_64x4d": (ResNetTrunk, "torchvision-layout ResNeXt-101 64x4d (imported mmdet X-101 weights)"),
    "resnest50": (ResNeStTrunk, "timm ResNeSt-50"),
    "resnest101": (ResNeStTrunk, "timm ResNeSt-101 (Table 1's S101)"),
    "resnest200": (ResNeStTrunk, "timm ResNeSt-200 (Table 2's S200)"),
    "resnest269": (ResNeStTrunk, "timm ResNeSt-269 (Table 2's S269)"),
    "tiny": (TinyTrunk, "small ResNet-like trunk of the CPU demo"),
}
# one family class per group of names: the names are the registry's (``model.backbone.name``)
for _name, (_family, _help) in _BACKBONE_HELP.items():
    BACKBONES.add(_name, _family, help=_help)


def build_trunk(bcfg: Any) -> nn.Module:
    """Build the C2-C5 trunk described by ``cfg.model.backbone`` (weights loaded, norms frozen)."""
    name, norm = bcfg.name, bcfg.norm
    dcn = [int(s) for s in bcfg.dcn_stages]
    family = BACKBONES.get(name)
    if norm not in NORMS:
        raise LvisctlError(f"model.backbone.norm: unknown norm {norm!r} (choose from {', '.join(NORMS)})")
    if any(s not in (3, 4, 5) for s in dcn):
        raise LvisctlError(f"model.backbone.dcn_stages: stages must be among 3, 4, 5, got {dcn}")
    if not 0 <= int(bcfg.freeze_at) <= 5:
        raise LvisctlError(f"model.backbone.freeze_at: must be 0..5, got {bcfg.freeze_at}")
    if bcfg.get("stride_in_1x1", False) and family is not ResNetTrunk:
        raise LvisctlError("model.backbone.stride_in_1x1: only the resnet / resnext backbones have it")
    trunk, weights_note, groups = family.from_config(bcfg)
    if norm == "frozen_bn":
        trunk = _freeze_bn(trunk)
    _freeze(groups, int(bcfg.freeze_at))
    trunk.weights_note = weights_note  # read by the trainer: what the ImageNet file did and did not load
    return trunk


def _freeze_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by torchvision's FrozenBatchNorm2d, keeping its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_bn(child)
    return module
