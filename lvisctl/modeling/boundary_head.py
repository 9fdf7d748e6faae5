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

How it plugs in: ``model.mask_head.type: boundary`` (the old switch ``model.mask_head.boundary: true`` says
the same) picks this head (``model.mask_head.num_convs`` / ``conv_dim``; ``num_convs: 7`` for the report's
"three more convolutions"). It is a mask head of the common contract (``lvisctl.modeling.mask_head``) that
adds what BMask adds to Mask R-CNN's: it pools its own boundary RoI features from P2 at 2S x 2S
(``roi_inputs``; ``extractor``, a RoIAlign without weights), its output carries ``boundary_logits`` next
to ``logits`` and ``features``, and ``losses`` adds ``loss_boundary = model.mask_head.boundary_loss_weight *
lvisctl.losses.boundary.boundary_loss(boundary logits of the GT class, binary mask targets)`` next to
``loss_mask``. At inference only ``logits`` are used.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.config import ModelConfig
from lvisctl.losses.boundary import boundary_loss
from lvisctl.modeling.mask_head import (
    MaskHeadBase,
    PositiveMasks,
    add_flow,
    conv_stack,
    flow_conv,
    msra_fill,
)
from lvisctl.modeling.poolers import RoIAlignExtractor
from lvisctl.registry import MASK_HEADS


class BoundaryHeadOutput(NamedTuple):
    """``MaskHeadOutput`` plus the boundary logits."""

    logits: Tensor  # [R, K + 1, 2S, 2S]
    features: Tensor  # fused mask features [R, conv_dim, S, S] (HTC's information flow)
    boundary_logits: Tensor  # [R, K + 1, 2S, 2S]


def _conv_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2), nn.ReLU(inplace=True)
    )


@MASK_HEADS.register("boundary", help="BMask R-CNN's boundary-preserving head (adds loss_boundary)")
class BoundaryPreservingMaskHead(MaskHeadBase):
    """Mask + boundary branches with feature fusion; ``forward`` gives a ``BoundaryHeadOutput``.

    ``extractor``: the boundary RoIAlign (P2 at 2S x 2S), None for a head used on its own (the caller then
    passes ``boundary_features`` or gets the upsampled mask features); ``loss_weight``: of ``loss_boundary``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        conv_dim: int = 256,
        num_convs: int = 4,
        num_boundary_convs: int = 2,
        flow_in: bool = False,
        extractor: nn.Module | None = None,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.extractor = extractor  # no weights: its place in the registration order changes nothing
        self.loss_weight = loss_weight
        # ``convs`` / ``deconv`` / ``predictor`` use the parameter names and layout of the plain
        # ``MaskHead``, so a stage-1 mask head loads into the first convs, the deconv and the predictor.
        self.convs, channels = conv_stack(in_channels, conv_dim, num_convs)
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
        msra_fill(self)
        for predictor in (self.predictor, self.boundary_predictor):
            nn.init.normal_(predictor.weight, std=0.001)
            nn.init.zeros_(predictor.bias)

    @classmethod
    def from_config(
        cls, mcfg: ModelConfig, num_classes: int, channels: int, *, flow_in: bool
    ) -> BoundaryPreservingMaskHead:
        """``model.mask_head``; the boundary RoIAlign samples as the RoI heads do (``model.roi_heads``)."""
        mask_cfg, rcfg = mcfg.mask_head, mcfg.roi_heads
        res, ratio, aligned = int(mask_cfg.pooler_resolution), int(rcfg.sampling_ratio), bool(rcfg.aligned)
        return cls(
            channels,
            num_classes + 1,
            conv_dim=int(mask_cfg.conv_dim),
            num_convs=int(mask_cfg.num_convs),
            flow_in=flow_in,
            # BMask's recipe: boundary features pooled from P2 at 2x the mask RoI size
            extractor=RoIAlignExtractor(2 * res, ratio, aligned),
            loss_weight=float(mask_cfg.boundary_loss_weight),
        )

    def roi_inputs(self, features: list[Tensor], rois: Tensor, levels: Tensor) -> dict[str, Tensor]:
        """BMask pools its boundary features from P2 only (level 0), at M x M."""
        if self.extractor is None:
            return {}
        return {"boundary_features": self.extractor(features, rois, levels=torch.zeros_like(levels))}

    def losses(self, out: BoundaryHeadOutput, positives: PositiveMasks) -> dict[str, Tensor]:
        loss = positives.weighted(boundary_loss, positives.pick(out.boundary_logits), positives.binary)
        return {"loss_boundary": self.loss_weight * loss}

    def _fused(
        self, mask_features: Tensor, boundary_features: Tensor | None, residual: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if boundary_features is None:
            size = (mask_features.shape[-2] * 2, mask_features.shape[-1] * 2)
            boundary_features = F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
        mask_feat = self.convs(add_flow(self.conv_res, mask_features, residual))
        boundary_feat = self.boundary_downsample(boundary_features) + self.mask_to_boundary(mask_feat)
        boundary_feat = self.boundary_convs(boundary_feat)
        mask_feat = self.mask_final_fusion(mask_feat + self.boundary_to_mask(boundary_feat))
        return mask_feat, boundary_feat

    def flow(
        self, x: Tensor, residual: Tensor | None = None, boundary_features: Tensor | None = None
    ) -> Tensor:
        return self._fused(x, boundary_features, residual)[0]

    def forward(
        self, x: Tensor, residual: Tensor | None = None, boundary_features: Tensor | None = None
    ) -> BoundaryHeadOutput:
        """``x`` N x C x S x S mask RoI features; ``boundary_features`` N x C x 2S x 2S or None (the
        upsampled mask features). Mask and boundary logits are both N x num_classes x 2S x 2S."""
        mask_feat, boundary_feat = self._fused(x, boundary_features, residual)
        mask_logits = self.predictor(F.relu(self.deconv(mask_feat)))
        boundary_logits = self.boundary_predictor(F.relu(self.boundary_deconv(boundary_feat)))
        return BoundaryHeadOutput(mask_logits, mask_feat, boundary_logits)
