"""torchvision's RPN with per-image loss weights (``target["loss_weight"]``, self-training's lambda).

Only the loss changes: each sampled anchor's objectness and box terms are scaled by its image's weight,
normalised exactly as torchvision does (by the number of sampled anchors), so with all weights 1 the
losses equal torchvision's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork


class WeightedRPN(RegionProposalNetwork):
    _image_weights: list[float] | None = None

    def forward(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        weights = None
        if targets is not None:
            weights = [float(t.get("loss_weight", 1.0)) for t in targets]
        # compute_loss has no access to the targets; pass the weights through the instance for this call.
        self._image_weights = None if weights is None or all(w == 1.0 for w in weights) else weights
        try:
            return super().forward(images, features, targets)
        finally:
            self._image_weights = None

    def compute_loss(
        self,
        objectness: Tensor,
        pred_bbox_deltas: Tensor,
        labels: list[Tensor],
        regression_targets: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        if self._image_weights is None:
            return super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
        pos, neg = self.fg_bg_sampler(labels)
        pos_idx = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos_idx, torch.where(torch.cat(neg))[0]])
        anchor_w = torch.cat(
            [
                torch.full((lab.numel(),), w, device=objectness.device)
                for lab, w in zip(labels, self._image_weights, strict=True)
            ]
        )
        labels_all = torch.cat(labels)
        targets_all = torch.cat(regression_targets)
        box = F.smooth_l1_loss(pred_bbox_deltas[pos_idx], targets_all[pos_idx], beta=1 / 9, reduction="none")
        box_loss = (box.sum(dim=1) * anchor_w[pos_idx]).sum() / max(sampled.numel(), 1)
        obj = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], labels_all[sampled], reduction="none"
        )
        obj_loss = (obj * anchor_w[sampled]).sum() / max(sampled.numel(), 1)
        return obj_loss, box_loss
