"""Backbone + FPN (Lin et al. 2017): P2-P5 from the trunk's C2-C5 and P6 by max-pooling P5 (for the RPN only).

torchvision's ``FeaturePyramidNetwork`` with ``LastLevelMaxPool`` does exactly this; the module only wires
it to the trunk and names the outputs ``"0".."3"`` (P2-P5) and ``"pool"`` (P6) as torchvision does.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

FPN_STRIDES = (4, 8, 16, 32)  # P2..P5; P6 (stride 64) is only seen by the RPN


class BackboneWithFPN(nn.Module):
    def __init__(self, trunk: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = trunk
        self.fpn = FeaturePyramidNetwork(
            list(trunk.out_channels), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def roi_feature_maps(features: dict[str, Tensor]) -> list[Tensor]:
    """The FPN maps RoIs are pooled from: P2..P5 (P6, ``"pool"``, is RPN-only).

    Under autocast they are cast to float32 here, once per forward: RoIAlign's autocast kernel would
    otherwise cast its whole input map on every call (~27 calls per HTC step, box + mask + boundary
    extractors of every stage). The values are the same (fp16 -> fp32 is exact).
    """
    maps = [features[k] for k in ("0", "1", "2", "3")]
    if torch.is_autocast_enabled(maps[0].device.type) and maps[0].dtype in (torch.float16, torch.bfloat16):
        return [m.float() for m in maps]
    return maps
