"""Mask R-CNN's mask loss (He et al., ICCV 2017): per-pixel binary cross-entropy on the mask of the RoI's
ground-truth class, averaged over pixels and RoIs.

Every mask loss is called as ``loss(logits, targets, area_ratio)``: ``logits`` / ``targets`` [P, M, M]
(the matched class's mask logits and the RoI-aligned GT mask), ``area_ratio`` [P] = S_mask / S_bbox
(unused here; the balanced loss of ``lvisctl.losses.balanced_mask`` weights by it). Every mask loss
registers itself on ``lvisctl.registry.MASK_LOSSES`` and builds itself with ``from_config(mask_cfg)``.
Config: ``model.mask_head.loss: bce``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.registry import MASK_LOSSES


@MASK_LOSSES.register("bce", help="per-pixel binary cross-entropy")
class BCEMaskLoss(nn.Module):
    """Mask R-CNN's per-pixel binary cross-entropy, averaged over pixels and RoIs (area_ratio unused)."""

    @classmethod
    def from_config(cls, mask_cfg: Any) -> BCEMaskLoss:
        return cls()

    def loss(self, logits: Tensor, targets: Tensor, area_ratio: Tensor) -> Tensor:
        if targets.numel() == 0:
            return logits.sum() * 0
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
