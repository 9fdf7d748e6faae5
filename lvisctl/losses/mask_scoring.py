"""Mask Scoring R-CNN's MaskIoU loss (Huang et al., CVPR 2019), as mmdet's ``MaskIoUHead``.

Targets: IoU between the binarised (> 0.5) predicted mask and the binarised ground-truth mask target of
each positive RoI on the M x M RoI grid; with ``inside_ratio`` (fraction of the GT instance inside the
RoI) the GT area is scaled up to the whole instance, as mmdet does. Loss: MSE on the GT-class output of
RoIs whose target is > 0, times ``loss_weight`` (0.5, mmdet's). The head is
``lvisctl.modeling.mask_iou_head.MaskIoUHead``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def mask_iou_targets(
    mask_probs: Tensor, mask_targets: Tensor, inside_ratio: Tensor | None = None, threshold: float = 0.5
) -> Tensor:
    """IoU of the binarised predicted masks and binarised targets (both N x M x M); N values in [0, 1].

    ``inside_ratio`` (fraction of each ground-truth instance inside its RoI) scales the ground-truth area up
    to the whole instance as mmdet does. An empty prediction and an empty target give 0.
    """
    pred = (mask_probs > threshold).flatten(1).float()
    gt = (mask_targets >= 0.5).flatten(1).float()
    overlap = (pred * gt).sum(dim=1)
    gt_area = gt.sum(dim=1)
    if inside_ratio is not None:
        gt_area = gt_area / (inside_ratio.to(gt_area) + 1e-7)
    union = pred.sum(dim=1) + gt_area - overlap
    return torch.where(union > 0, overlap / union.clamp_min(1e-7), torch.zeros_like(union))


def mask_iou_loss(iou_pred: Tensor, labels: Tensor, iou_targets: Tensor, loss_weight: float = 0.5) -> Tensor:
    """MSE between the ground-truth-class predictions (N x K; ``labels`` index the columns directly) and
    the targets, over RoIs with target > 0; scaled by ``loss_weight``."""
    rows = torch.arange(iou_pred.shape[0], device=iou_pred.device)
    pred = iou_pred[rows, labels]
    positive = iou_targets > 0
    if not bool(positive.any()):
        return iou_pred.sum() * 0.0
    return loss_weight * F.mse_loss(pred[positive], iou_targets[positive].to(pred.dtype))
