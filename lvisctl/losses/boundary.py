"""Boundary supervision of BMask R-CNN (Cheng et al., "Boundary-preserving Mask R-CNN", ECCV 2020).

Boundary targets come from the ground-truth mask targets exactly as BMask R-CNN's ``boundary_loss_func``:
convolve with the 3x3 Laplacian kernel [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]] (zero padding), clamp at 0, and
binarise with ``> 0.1``. On a binary mask this marks the foreground pixels with at least one background
8-neighbour (the inner contour; mask pixels on the RoI border count as boundary because of the zero padding).
The loss is BCE (mean over pixels) + Dice with smoothing 1 on linear sums (BMask's ``dice_loss_func``:
``1 - (2 sum p*t + 1) / (sum p + sum t + 1)`` per RoI, averaged), with targets resized by nearest
interpolation when the boundary prediction has another size.

How it plugs in: the boundary branch (``lvisctl.modeling.boundary_head.BoundaryPreservingMaskHead``)
returns boundary logits of the ground-truth class per positive RoI (N x M x M); the core adds
``loss_boundary = boundary_loss(boundary_logits, mask_targets)`` to the loss dict next to ``loss_mask``.
Config switch: ``model.mask_head.boundary`` (false); weight ``model.mask_head.boundary_loss_weight`` (1.0,
BMask's). The core passes the binarised (``>= 0.5``) M x M mask targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BOUNDARY_THRESHOLD = 0.1


def _laplacian_kernel(device: torch.device, dtype: torch.dtype) -> Tensor:
    kernel = torch.full((3, 3), -1.0, device=device, dtype=dtype)
    kernel[1, 1] = 8.0
    return kernel.reshape(1, 1, 3, 3)


@torch.no_grad()
def boundary_targets(masks: Tensor) -> Tensor:
    """Binary boundary maps (float, N x H x W) of binary mask targets (N x H x W)."""
    masks = masks.float()
    response = F.conv2d(masks[:, None], _laplacian_kernel(masks.device, masks.dtype), padding=1)[:, 0]
    return (response.clamp_min(0) > BOUNDARY_THRESHOLD).float()


def dice_loss(probs: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """BMask's Dice loss: ``1 - (2 sum p*t + smooth) / (sum p + sum t + smooth)`` per RoI, averaged."""
    probs = probs.flatten(1)
    targets = targets.flatten(1)
    inter = (probs * targets).sum(dim=1)
    return (1.0 - (2.0 * inter + smooth) / (probs.sum(dim=1) + targets.sum(dim=1) + smooth)).mean()


def boundary_loss(boundary_logits: Tensor, mask_targets: Tensor) -> Tensor:
    """BCE + Dice between boundary logits (N x h x w) and the boundaries of ``mask_targets`` (N x H x W).

    N = 0 gives a zero connected to ``boundary_logits``.
    """
    if boundary_logits.shape[0] == 0:
        return boundary_logits.sum() * 0.0
    targets = boundary_targets(mask_targets)
    if targets.shape[-2:] != boundary_logits.shape[-2:]:
        targets = F.interpolate(targets[:, None], size=boundary_logits.shape[-2:], mode="nearest")[:, 0]
    logits = boundary_logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    return bce + dice_loss(torch.sigmoid(logits), targets)
