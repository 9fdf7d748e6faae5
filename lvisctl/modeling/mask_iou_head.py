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

How it plugs in: ``MaskScorer`` (``model.mask_head.mask_iou``, default false; weight
``model.mask_head.mask_iou_loss_weight`` 0.5) holds the ``MaskIoUHead`` (``num_classes`` = the mask
predictor's channel count, K + 1, so contiguous labels 1..K index the columns directly; ``conv_channels`` /
``fc_channels`` = ``model.mask_head.conv_dim`` / ``model.roi_heads.fc_dim``) and is the one place of Mask
Scoring: ``loss(...)`` gives ``loss_mask_iou`` for the positives, ``predict(...)`` each mask's IoU for its
label, and ``rescore(cls_scores, iou)`` the mask score = cls score x predicted IoU (clamped to [0, 1]);
``scores`` (used for the boxes) stay the classification scores, as in MS R-CNN and mmdet. The mask branch
that carries it (``mask_branch.ScoredMaskBranch``, the last stage's) calls ``loss`` and ``predict``; every
``mask_scores`` of the model comes from ``rescore``. The predicted mask is not detached (as in mmdet), so
the IoU loss also trains the mask head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.config import ModelConfig
from lvisctl.losses.mask_scoring import mask_iou_loss, mask_iou_targets
from lvisctl.modeling.mask_assign import mask_areas_in_boxes
from lvisctl.modeling.mask_head import PositiveMasks, conv_stack, msra_fill


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
        # + 1 input channel for the pooled mask; the last conv halves the size
        self.convs, _ = conv_stack(in_channels + 1, conv_channels, num_convs, last_stride=2)
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
        msra_fill(self.convs)
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


class MaskScorer(nn.Module):
    """Mask Scoring: the MaskIoU head, its loss and the rescoring of the masks (the only place)."""

    def __init__(self, head: MaskIoUHead, loss_weight: float = 0.5) -> None:
        super().__init__()
        self.head = head
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, mcfg: ModelConfig, num_classes: int, channels: int) -> MaskScorer:
        """MS R-CNN's widths follow the mask convs and box fcs (256 / 1024 by default, MS R-CNN's values)."""
        mask_cfg = mcfg.mask_head
        res, dim, fc = int(mask_cfg.pooler_resolution), int(mask_cfg.conv_dim), int(mcfg.roi_heads.fc_dim)
        return cls(MaskIoUHead(channels, num_classes + 1, res, dim, fc), float(mask_cfg.mask_iou_loss_weight))

    def loss(self, roi_features: Tensor, logits: Tensor, positives: PositiveMasks) -> Tensor:
        """``loss_mask_iou``: ``logits`` [P, M, M] are the positives' GT-class mask logits."""
        iou_pred = self.head(roi_features, logits).float()
        inside = torch.cat(
            [
                gt_inside_ratio(m, b, g)
                for m, b, g in zip(positives.gt_masks, positives.boxes, positives.gt_index, strict=True)
            ]
        )
        iou_targets = mask_iou_targets(logits.detach().float().sigmoid(), positives.binary, inside)

        def iou_loss(pred: Tensor, lab: Tensor, tgt: Tensor) -> Tensor:
            return mask_iou_loss(pred, lab, tgt, self.loss_weight)

        return positives.weighted(iou_loss, iou_pred, positives.labels, iou_targets)

    def predict(self, roi_features: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """The predicted IoU [N] of each mask (``logits`` [N, M, M] of its ``labels``' channel)."""
        iou = self.head(roi_features, logits).float()
        rows = torch.arange(labels.numel(), device=logits.device)
        return iou[rows, labels]

    @staticmethod
    def rescore(cls_scores: Tensor, mask_iou: Tensor) -> Tensor:
        """Mask score = classification score x predicted mask IoU (of the detection's class), for the masks
        only: the boxes keep the classification score (MS R-CNN, mmdet).

        The regressed IoU is clamped to [0, 1] (its range by definition) so a slightly negative prediction
        cannot produce a negative score that downstream score thresholds would silently drop.
        """
        return cls_scores * mask_iou.clamp(0.0, 1.0).to(cls_scores.dtype)


def gt_inside_ratio(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor) -> Tensor:
    """Fraction of each matched GT instance's pixels inside its proposal (MS R-CNN's whole-instance IoU
    target); 0 for an empty GT mask."""
    inside = mask_areas_in_boxes(gt_masks, boxes, gt_index.to(boxes.device))
    full = (gt_masks > 0).flatten(1).sum(dim=1).to(inside)
    full = full[gt_index.to(full.device)] if full.numel() else inside.new_zeros(0)
    return torch.where(full > 0, inside / full.clamp_min(1), torch.zeros_like(inside))
