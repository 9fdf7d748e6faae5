"""Mask head with a boundary branch and two-way feature fusion (BMask R-CNN's ``BoundaryPreservingHead``).

Cheng et al., "Boundary-preserving Mask R-CNN", ECCV 2020 (github.com/hustvl/BMaskR-CNN). Layout, following
that head:

    mask RoI features (C x S x S)  -> num_convs x [3x3 conv, ReLU] -> mask features F_m
    boundary RoI features (C x 2S x 2S) -> [3x3 conv stride 2, ReLU] -> F_b
    F_b = F_b + ReLU(1x1 conv(F_m))                        mask -> boundary fusion
    F_b -> num_boundary_convs x [3x3 conv, ReLU]
    F_m = ReLU(3x3 conv(F_m + ReLU(1x1 conv(F_b))))        boundary -> mask fusion, then "final fusion" conv
    mask logits     = 1x1 conv(ReLU(deconv 2x2 stride 2 (F_m)))      (K x 2S x 2S)
    boundary logits = 1x1 conv(ReLU(deconv 2x2 stride 2 (F_b)))      (K x 2S x 2S)

BMask pools the boundary RoI features separately at 2S x 2S (28 x 28) from the finest FPN level (P2). When
the caller does not provide them (``boundary_features=None``), the S x S mask RoI features are upsampled
bilinearly to 2S x 2S instead: cheaper, but less detail; pass P2 features pooled at 2S for the BMask recipe.
Weights are initialised as detectron2 does (MSRA fill for convs/deconvs, N(0, 0.001) for the predictors).

How it plugs in: with ``model.mask_head.boundary: true`` this module replaces the core's mask head +
predictor (``model.mask_head.num_convs`` / ``conv_dim``; ``num_convs: 7`` for the report's "three more
convolutions"), and the core pools the boundary features from P2 at 2S x 2S (the BMask recipe).
In training the core selects each positive RoI's ground-truth-class channel of both outputs and adds
``loss_boundary = model.mask_head.boundary_loss_weight * lvisctl.losses.boundary.boundary_loss(
boundary_logits, mask_targets)`` next to ``loss_mask``. At inference only ``mask_logits`` are used.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.modeling.mask_head import MaskHeadOutput, add_flow, flow_conv


def _conv_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2), nn.ReLU(inplace=True)
    )


class BoundaryPreservingMaskHead(nn.Module):
    """Mask + boundary branches with feature fusion; returns ``(mask_logits, boundary_logits)``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv_dim: int = 256,
        num_convs: int = 4,
        num_boundary_convs: int = 2,
        flow_in: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
            channels = conv_dim
        # ``convs`` / ``deconv`` / ``predictor`` use the parameter names and layout of the plain
        # ``MaskHead``, so a stage-1 mask head loads into the first convs, the deconv and the predictor.
        self.convs = nn.Sequential(*layers)
        self.boundary_downsample = _conv_relu(in_channels, conv_dim, 3, stride=2)
        self.mask_to_boundary = _conv_relu(channels, conv_dim, 1)
        self.boundary_convs = nn.Sequential(
            *[_conv_relu(conv_dim, conv_dim, 3) for _ in range(num_boundary_convs)]
        )
        self.boundary_to_mask = _conv_relu(conv_dim, conv_dim, 1)
        self.mask_final_fusion = _conv_relu(conv_dim, conv_dim, 3)
        self.deconv = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        self.boundary_deconv = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
        self.boundary_predictor = nn.Conv2d(conv_dim, num_classes, 1)
        self.conv_res = flow_conv(conv_dim, in_channels, flow_in)  # HTC information flow (mask path)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for predictor in (self.predictor, self.boundary_predictor):
            nn.init.normal_(predictor.weight, std=0.001)
            nn.init.zeros_(predictor.bias)

    def run(
        self,
        mask_features: Tensor,
        boundary_features: Tensor | None = None,
        residual: Tensor | None = None,
        with_logits: bool = True,
    ) -> MaskHeadOutput:
        """The mask-head call of every head type (``lvisctl.modeling.mask_head``); ``features`` are the
        fused mask features that go into the deconv."""
        if boundary_features is None:
            size = (mask_features.shape[-2] * 2, mask_features.shape[-1] * 2)
            boundary_features = F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
        mask_feat = self.convs(add_flow(self.conv_res, mask_features, residual))
        boundary_feat = self.boundary_downsample(boundary_features) + self.mask_to_boundary(mask_feat)
        boundary_feat = self.boundary_convs(boundary_feat)
        mask_feat = self.mask_final_fusion(mask_feat + self.boundary_to_mask(boundary_feat))
        if not with_logits:
            return MaskHeadOutput(None, None, mask_feat)
        mask_logits = self.predictor(F.relu(self.deconv(mask_feat)))
        boundary_logits = self.boundary_predictor(F.relu(self.boundary_deconv(boundary_feat)))
        return MaskHeadOutput(mask_logits, boundary_logits, mask_feat)

    def forward(
        self, mask_features: Tensor, boundary_features: Tensor | None = None, residual: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``mask_features`` N x C x S x S; ``boundary_features`` N x C x 2S x 2S or None (upsampled mask
        features). Returns mask and boundary logits, both N x num_classes x 2S x 2S."""
        out = self.run(mask_features, boundary_features, residual)
        assert out.logits is not None and out.boundary_logits is not None
        return out.logits, out.boundary_logits
