"""Class-specific mask branch (Mask R-CNN): ``num_convs`` 3x3 convs, a 2x deconv, a 1x1 predictor.

Seams:
* ``model.mask_head.num_convs``: the paper's "three more convolutions" is ``num_convs: 7``.
* Mask loss: any object with ``loss(logits, targets, area_ratio) -> Tensor`` (``logits`` / ``targets``
  [P, M, M] for the matched class, ``area_ratio`` [P] = mask area / proposal box area); the default is
  ``BCEMaskLoss``; the balanced Dice + weighted BCE loss (``lvisctl/losses/balanced_mask.py``) plugs in here.
* Boundary branch: ``model.mask_head.boundary: true`` replaces this head by BMask R-CNN's
  ``lvisctl.modeling.boundary_head.BoundaryPreservingMaskHead`` (same convs, plus boundary fusion).
* MaskIoU head (``model.mask_head.mask_iou: true``, ``lvisctl/modeling/mask_iou_head.py``) reads the mask
  RoI features (this head's input) and the predicted mask; both are wired in ``LvisRoIHeads._mask_forward``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MaskHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, num_convs: int = 4, conv_dim: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(ch, conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
            ch = conv_dim
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(ch, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes + 1, 1)  # class-specific, index = label
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, roi_features: Tensor) -> tuple[Tensor, Tensor]:
        """[R, C, S, S] -> (mask logits [R, K + 1, 2S, 2S], last conv features [R, conv_dim, S, S])."""
        x = self.convs(roi_features)
        return self.predictor(F.relu(self.deconv(x))), x


class BCEMaskLoss(nn.Module):
    """Mask R-CNN's per-pixel binary cross-entropy, averaged over pixels and RoIs (area_ratio unused)."""

    def loss(self, logits: Tensor, targets: Tensor, area_ratio: Tensor) -> Tensor:
        if targets.numel() == 0:
            return logits.sum() * 0
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
