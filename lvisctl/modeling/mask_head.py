"""Class-specific mask branch (Mask R-CNN): ``num_convs`` 3x3 convs, a 2x deconv, a 1x1 predictor.

Every mask head (this one and BMask R-CNN's ``BoundaryPreservingMaskHead``) has the same call for the
mask branch (``lvisctl/modeling/mask_branch.py``): ``run(roi_features, boundary_features, residual,
with_logits) -> MaskHeadOutput(logits, boundary_logits, features)``. ``features`` are the last conv
features (before the deconv); HTC's mask information flow passes them to the next stage's head as
``residual``, which a head built with ``flow_in=True`` adds to its RoI features through a 1x1 conv + ReLU
(``conv_res``, as mmdet's ``HTCMaskHead``).

Seams: ``model.mask_head.num_convs`` (the paper's "three more convolutions" is ``num_convs: 7``); the
mask loss (``lvisctl/losses/mask_rcnn.py``, ``lvisctl/losses/balanced_mask.py``); the boundary head
(``model.mask_head.boundary``); the MaskIoU head (``model.mask_head.mask_iou``) reads this head's input
RoI features and its predicted mask.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn


class MaskHeadOutput(NamedTuple):
    logits: Tensor | None  # [R, K + 1, 2S, 2S], None when not asked for
    boundary_logits: Tensor | None  # [R, K + 1, 2S, 2S] of the boundary head, else None
    features: Tensor  # last conv features [R, conv_dim, S, S] (HTC's information flow)


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


class MaskHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_convs: int = 4,
        conv_dim: int = 256,
        flow_in: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(ch, conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
            ch = conv_dim
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(ch, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes + 1, 1)  # class-specific, index = label
        self.conv_res = flow_conv(ch, in_channels, flow_in)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def run(
        self,
        roi_features: Tensor,
        boundary_features: Tensor | None = None,
        residual: Tensor | None = None,
        with_logits: bool = True,
    ) -> MaskHeadOutput:
        """The mask-head call of every head type; ``boundary_features`` are unused here."""
        x = self.convs(add_flow(self.conv_res, roi_features, residual))
        logits = self.predictor(F.relu(self.deconv(x))) if with_logits else None
        return MaskHeadOutput(logits, None, x)

    def forward(self, roi_features: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[R, C, S, S] -> (mask logits [R, K + 1, 2S, 2S], last conv features [R, conv_dim, S, S])."""
        out = self.run(roi_features, residual=residual)
        assert out.logits is not None
        return out.logits, out.features
