"""The mask-head contract, and Mask R-CNN's class-specific FCN head (``model.mask_head.type: fcn``).

Every mask head (``lvisctl.registry.MASK_HEADS``) is an ``nn.Module`` with

* ``forward(x, residual=None) -> MaskHeadOutput(logits, features)``: ``x`` the mask RoI features
  [R, C, S, S], ``logits`` [R, K + 1, 2S, 2S] (class-specific, index = contiguous label), ``features``
  the last conv features (HTC's mask information flow passes them on to the next stage's head as
  ``residual``; a head built with ``flow_in=True`` adds them through its 1x1 conv + ReLU ``conv_res``, as
  mmdet's ``HTCMaskHead``);
* ``from_config(mcfg, num_classes, channels, *, flow_in) -> head`` (classmethod): how the model section
  (``mcfg.mask_head`` mostly; a cascade's own RoIAlign settings already in ``mcfg.roi_heads``) builds it;

and may override three hooks of ``MaskHeadBase`` (the defaults are right for a plain head):
``flow(x, residual)`` (features only, for the earlier heads of HTC's flow), ``roi_inputs(features, rois,
levels)`` (more RoI inputs than ``x``, pooled by the head itself and passed to ``forward`` as keywords:
BMask R-CNN's boundary features) and ``losses(out, positives)`` (losses of its own next to ``loss_mask``:
BMask's ``loss_boundary``). The mask branch (``mask_branch.py``) calls only these, so a new head is one
file with ``@MASK_HEADS.register("name", help=...)`` plus ``model.mask_head.type: name``.

Seams of the FCN head: ``model.mask_head.num_convs`` (the paper's "three more convolutions" is
``num_convs: 7``) and ``conv_dim``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.config import ModelConfig
from lvisctl.modeling.sampling import image_weighted
from lvisctl.registry import MASK_HEADS


class MaskHeadOutput(NamedTuple):
    logits: Tensor  # [R, K + 1, 2S, 2S]
    features: Tensor  # last conv features [R, conv_dim, S, S] (HTC's information flow)


@dataclass
class PositiveMasks:
    """The positive RoIs of one training batch, as a head's own ``losses`` sees them."""

    labels: Tensor  # [P] contiguous GT labels (the channel of each RoI's mask)
    targets: Tensor  # [P, M, M] RoI-aligned GT masks (soft, from RoIAlign)
    counts: list[int]  # positives per image
    weights: list[float]  # self-training image weights
    boxes: list[Tensor]  # per image: the positive RoIs' boxes
    gt_index: list[Tensor]  # per image: the matched GT instance of each positive RoI
    gt_masks: list[Tensor]  # per image: the uint8 GT masks [G, H, W]

    @property
    def binary(self) -> Tensor:
        return (self.targets >= 0.5).to(self.targets.dtype)

    def pick(self, per_class: Tensor) -> Tensor:
        """[P, K + 1, ...] -> [P, ...]: each RoI's channel of its GT label."""
        rows = torch.arange(self.labels.numel(), device=per_class.device)
        return per_class[rows, self.labels]

    def weighted(self, loss_fn: Callable[..., Tensor], *rows: Tensor) -> Tensor:
        """``loss_fn(*rows)`` with the self-training image weights (``sampling.image_weighted``)."""
        return image_weighted(loss_fn, self.counts, self.weights, *rows)


class MaskHeadBase(nn.Module):
    """The contract of every mask head (see the module docstring)."""

    @classmethod
    def from_config(
        cls, mcfg: ModelConfig, num_classes: int, channels: int, *, flow_in: bool
    ) -> MaskHeadBase:
        raise NotImplementedError

    def flow(self, x: Tensor, residual: Tensor | None = None, **inputs: Tensor) -> Tensor:
        """The features this head passes on in HTC's information flow (its logits are not needed)."""
        return self(x, residual, **inputs).features

    def roi_inputs(self, features: list[Tensor], rois: Tensor, levels: Tensor) -> dict[str, Tensor]:
        """RoI inputs beyond ``x`` that this head pools itself (keywords of ``forward``); none here."""
        return {}

    def losses(self, out: Any, positives: PositiveMasks) -> dict[str, Tensor]:
        """The head's own losses next to the branch's ``loss_mask``; none here."""
        return {}


def conv_stack(
    in_channels: int, conv_dim: int, num_convs: int, last_stride: int = 1
) -> tuple[nn.Sequential, int]:
    """``num_convs`` x [3x3 conv, ReLU], the last conv with stride ``last_stride``, as one ``nn.Sequential``
    (conv weights at ``{2i}.*``, Mask R-CNN's mask-head layout), and the channels it puts out."""
    layers: list[nn.Module] = []
    channels = in_channels
    for i in range(num_convs):
        stride = last_stride if i == num_convs - 1 else 1
        layers += [nn.Conv2d(channels, conv_dim, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]
        channels = conv_dim
    return nn.Sequential(*layers), channels


def msra_fill(module: nn.Module) -> None:
    """detectron2's ``c2_msra_fill`` for every conv and deconv in ``module``: Kaiming normal (fan out),
    zero bias."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)


def flow_conv(conv_dim: int, in_channels: int, flow_in: bool) -> nn.Module | None:
    """HTC's ``conv_res``: 1x1 conv + ReLU from the previous head's features to the RoI features."""
    if not flow_in:
        return None
    return nn.Sequential(nn.Conv2d(conv_dim, in_channels, 1), nn.ReLU(inplace=True))


def add_flow(conv_res: nn.Module | None, roi_features: Tensor, residual: Tensor | None) -> Tensor:
    """RoI features plus the transformed previous-stage features (HTC Eq. 4); unchanged without flow."""
    if residual is None:
        return roi_features
    if conv_res is None:
        raise ValueError("this mask head was built without an information-flow input (flow_in=False)")
    return roi_features + conv_res(residual)


@MASK_HEADS.register("fcn", help="Mask R-CNN's FCN head: num_convs 3x3 convs, a 2x deconv, 1x1 predictor")
class MaskHead(MaskHeadBase):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_convs: int = 4,
        conv_dim: int = 256,
        flow_in: bool = False,
    ) -> None:
        super().__init__()
        self.convs, ch = conv_stack(in_channels, conv_dim, num_convs)
        self.deconv = nn.ConvTranspose2d(ch, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes + 1, 1)  # class-specific, index = label
        self.conv_res = flow_conv(ch, in_channels, flow_in)
        msra_fill(self)

    @classmethod
    def from_config(cls, mcfg: ModelConfig, num_classes: int, channels: int, *, flow_in: bool) -> MaskHead:
        mask_cfg = mcfg.mask_head
        return cls(channels, num_classes, int(mask_cfg.num_convs), int(mask_cfg.conv_dim), flow_in=flow_in)

    def flow(self, x: Tensor, residual: Tensor | None = None, **inputs: Tensor) -> Tensor:
        return self.convs(add_flow(self.conv_res, x, residual))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> MaskHeadOutput:
        """[R, C, S, S] -> (mask logits [R, K + 1, 2S, 2S], last conv features [R, conv_dim, S, S])."""
        features = self.flow(x, residual)
        return MaskHeadOutput(self.predictor(F.relu(self.deconv(features))), features)
