"""Balanced mask loss (lvisTraveler, LVIS Challenge 2020 report, Eq. 2-5): Dice + area-weighted BCE.

    L_mask = mean_i [ Dice_i + lam * WBCE_i ]
    Dice_i = 1 - (2 sum p*y + eps) / (sum p^2 + sum y^2 + eps)                       (Eq. 3)
    WBCE_i = mean over the M x M pixels of w * BCE(p, y)                             (Eq. 4)
    w      = 1 on background pixels, max(1, 0.5 * S_bbox / S_mask) on foreground    (Eq. 5)

Eq. 4 as printed has no minus sign and sums over pixels; the intended loss (a positive, per-pixel averaged
weighted BCE, so that lam = 1 balances it against the Dice term which lies in [0, 1]) is used here.
``area_ratio`` is S_mask / S_bbox of each RoI: S_bbox the proposal area and S_mask the area of its matched
ground-truth mask inside the proposal (``lvisctl.modeling.mask_assign.mask_areas_in_boxes``). When it is
not given, the fraction of foreground pixels of the M x M target is used (the same quantity measured on
the resampled target).

How it plugs in: it is the model core's mask-loss hook ``loss(logits, targets, area_ratio)`` where
``logits`` are the mask logits of each positive RoI's ground-truth class (N x M x M) and ``targets`` the
binarised (``>= 0.5``) RoI-aligned ground-truth masks. Config switch: ``model.mask_head.loss: balanced``;
keys ``model.mask_head.balanced_lambda`` (1.0) and ``model.mask_head.balanced_eps`` (1.0), the paper's values.
In the core ``area_ratio`` is the foreground fraction of the projected M x M target.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.registry import MASK_LOSSES

# S_mask is clamped to this fraction of S_bbox only to avoid a division by zero; a RoI whose ratio is 0 has
# no foreground pixel in a consistent target, so the foreground weight is never used there.
_MIN_AREA_RATIO = 1e-6


def foreground_weight(area_ratio: Tensor) -> Tensor:
    """Eq. 5 foreground weight ``max(1, 0.5 * S_bbox / S_mask)`` per RoI (``area_ratio = S_mask/S_bbox``)."""
    return (0.5 / area_ratio.clamp_min(_MIN_AREA_RATIO)).clamp_min(1.0)


def balanced_mask_loss(
    logits: Tensor, targets: Tensor, area_ratio: Tensor | None = None, lam: float = 1.0, eps: float = 1.0
) -> Tensor:
    """Balanced mask loss (Eq. 2-5), averaged over RoIs.

    Args:
        logits: N x M x M mask logits (of each RoI's ground-truth class).
        targets: N x M x M targets in {0, 1}.
        area_ratio: N values S_mask / S_bbox; ``None`` uses the foreground fraction of each target.
        lam: weight of the weighted BCE term (lambda of Eq. 2).
        eps: Dice smoothing term (epsilon of Eq. 3).

    Returns a scalar; with N = 0 a zero that is still connected to ``logits`` (so backward works).
    """
    if logits.shape != targets.shape or logits.dim() != 3:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be N x M x M"
        )
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    targets = targets.to(logits.dtype)
    flat_logits = logits.flatten(1)
    flat_targets = targets.flatten(1)
    if area_ratio is None:
        area_ratio = flat_targets.mean(dim=1)
    area_ratio = area_ratio.to(logits.dtype).reshape(-1)

    probs = torch.sigmoid(flat_logits)
    inter = (probs * flat_targets).sum(dim=1)
    denom = (probs * probs).sum(dim=1) + (flat_targets * flat_targets).sum(dim=1)
    dice = 1.0 - (2.0 * inter + eps) / (denom + eps)

    # binary_cross_entropy_with_logits is the log-sigmoid form: finite for any logit magnitude.
    bce = F.binary_cross_entropy_with_logits(flat_logits, flat_targets, reduction="none")
    fg_weight = foreground_weight(area_ratio)[:, None]
    weights = torch.where(flat_targets > 0.5, fg_weight, torch.ones_like(fg_weight))
    wbce = (weights * bce).mean(dim=1)
    return (dice + lam * wbce).mean()


@MASK_LOSSES.register("balanced", help="the paper's balanced mask loss, Dice + area-weighted BCE (Eq. 2-5)")
class BalancedMaskLoss(nn.Module):
    """The mask-loss interface (``loss(logits, targets, area_ratio)``) around ``balanced_mask_loss``."""

    def __init__(self, lam: float = 1.0, eps: float = 1.0) -> None:
        super().__init__()
        self.lam, self.eps = lam, eps

    @classmethod
    def from_config(cls, mask_cfg: Any) -> BalancedMaskLoss:
        """``model.mask_head.balanced_lambda`` / ``balanced_eps``."""
        return cls(float(mask_cfg.balanced_lambda), float(mask_cfg.balanced_eps))

    def loss(self, logits: Tensor, targets: Tensor, area_ratio: Tensor) -> Tensor:
        binary = (targets >= 0.5).to(logits.dtype)
        return balanced_mask_loss(logits, binary, area_ratio, lam=self.lam, eps=self.eps)
