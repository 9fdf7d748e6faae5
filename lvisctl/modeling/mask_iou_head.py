"""Mask Scoring (Huang et al., "Mask Scoring R-CNN", CVPR 2019): a MaskIoU head that predicts the IoU of
each predicted mask with its ground truth, and mask score = classification score x predicted mask IoU.

Following MS R-CNN (and mmdet's ``MaskIoUHead``):
 * input: the mask RoI features (C x S x S, the features the mask head gets) concatenated with the
   2x2 max-pooled predicted mask probability of the RoI's class (1 x S x S, from the 2S x 2S mask);
 * 4 convs 3x3 (the last with stride 2) + ReLU, then fc 1024 - fc 1024 - fc num_classes ("4 convs + 3 fc");
 * target: IoU between the binarised (> 0.5) predicted mask and the binarised ground-truth mask target of
   the RoI, on the M x M RoI grid. mmdet divides the in-RoI ground-truth area by the fraction of the
   instance inside the RoI so the IoU is w.r.t. the whole instance; pass that fraction as ``inside_ratio``
   to get the same, omit it for the in-RoI IoU;
 * loss: L2 (MSE) on the ground-truth-class output of positive RoIs whose target is > 0, loss weight 0.5
   (mmdet's ``MSELoss(loss_weight=0.5)``); with no such RoI, a zero connected to the graph;
 * test: ``mask_scores(cls_scores, iou_pred, labels) = cls_score * iou_pred[label]``; only the masks are
   rescored (the boxes keep the classification score).
 * targets and loss live in ``lvisctl.losses.mask_scoring``.

How it plugs in: build it with ``num_classes`` = the mask predictor's channel count (K + 1 in the
torchvision convention, so contiguous labels 1..K index the columns directly). It is an optional extra
output of the mask branch (``model.mask_head.mask_iou``, default false; weight
``model.mask_head.mask_iou_loss_weight`` 0.5; the core sizes ``conv_channels`` / ``fc_channels`` as
``model.mask_head.conv_dim`` / ``model.roi_heads.fc_dim``). In training the core runs
``MaskIoUHead(mask_roi_features, mask_logits_of_gt_class)`` for the positives and adds ``loss_mask_iou``; at
inference it runs the head on the detections' mask logits of the predicted class and gives each
detection a ``mask_scores`` entry = cls score x predicted IoU (clamped to [0, 1]); ``scores`` (used for
the boxes) stay the classification scores, as in MS R-CNN and mmdet. The predicted mask is not detached
(as in mmdet), so the IoU loss also trains the mask head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskIoUHead(nn.Module):
    """Predicts per-class mask IoU from mask RoI features and the predicted mask."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        roi_size: int = 14,
        conv_channels: int = 256,
        fc_channels: int = 1024,
        num_convs: int = 4,
    ) -> None:
        super().__init__()
        convs, channels = [], in_channels + 1  # + 1 for the pooled mask
        for i in range(num_convs):
            stride = 2 if i == num_convs - 1 else 1
            convs += [nn.Conv2d(channels, conv_channels, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]
            channels = conv_channels
        self.convs = nn.Sequential(*convs)
        pooled = (roi_size + 1) // 2  # spatial size after the stride-2 conv
        self.fcs = nn.Sequential(
            nn.Linear(conv_channels * pooled * pooled, fc_channels),
            nn.ReLU(inplace=True),
            nn.Linear(fc_channels, fc_channels),
            nn.ReLU(inplace=True),
        )
        self.fc_iou = nn.Linear(fc_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.convs:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for module in self.fcs:
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc_iou.weight, std=0.01)
        nn.init.zeros_(self.fc_iou.bias)

    def forward(self, mask_features: Tensor, mask_logits: Tensor) -> Tensor:
        """``mask_features`` N x C x S x S, ``mask_logits`` N x 2S x 2S (the RoI's class). Returns N x K."""
        pooled_mask = F.max_pool2d(torch.sigmoid(mask_logits)[:, None], kernel_size=2, stride=2)
        x = self.convs(torch.cat([mask_features, pooled_mask.to(mask_features.dtype)], dim=1))
        return self.fc_iou(self.fcs(x.flatten(1)))


def rescore_with_mask_iou(cls_scores: Tensor, mask_iou: Tensor) -> Tensor:
    """Mask score = classification score x predicted mask IoU (of the detection's class), for the masks
    only: the boxes keep the classification score (MS R-CNN, mmdet).

    The regressed IoU is clamped to [0, 1] (its range by definition) so a slightly negative prediction
    cannot produce a negative score that downstream score thresholds would silently drop.
    """
    return cls_scores * mask_iou.clamp(0.0, 1.0).to(cls_scores.dtype)


def mask_scores(cls_scores: Tensor, iou_pred: Tensor, labels: Tensor) -> Tensor:
    """``rescore_with_mask_iou`` with the IoU of each detection's class picked from ``iou_pred`` [N, K + 1]
    (``labels`` index the columns directly)."""
    rows = torch.arange(iou_pred.shape[0], device=iou_pred.device)
    return rescore_with_mask_iou(cls_scores, iou_pred[rows, labels])
