"""torchvision's RPN with self-training's two additions (paper 2.1).

* Per-image loss weights (``target["loss_weight"]``, lambda of pseudo-labelled extra images): each
  sampled anchor's objectness and box terms are scaled by its image's weight, normalised exactly as
  torchvision does (by the number of sampled anchors), so with all weights 1 the losses equal torchvision's.
* Ignore regions (``target["ignore_boxes"]``, missing-annotation pseudo labels), with mmdet's
  ``gt_bboxes_ignore`` semantics (``MaxIoUAssigner``, ``ignore_iof_thr``, ``ignore_wrt_candidates``): an
  anchor whose intersection with an ignore box covers at least ``ignore_iof_thresh`` of the *anchor's*
  area is neither positive nor negative (label -1, never sampled). Intersection over the anchor, not IoU:
  a small anchor on a part of a large unannotated object would otherwise be taught "background".
  Without ignore boxes the labels equal torchvision's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import box_area

IGNORED = -1.0  # torchvision's label for anchors between the thresholds: not sampled


class Fp32AnchorGenerator(AnchorGenerator):
    """Anchors in float32 whatever the features' dtype (torchvision takes it from the features: fp16
    under autocast, 1 px apart above 1024 px, up to 2.3 px off after decoding at the 1400 px TTA scale).
    mmdet and detectron2 build anchors in float32 too."""

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        # only the maps' sizes and device are read: empty float32 stand-ins with the same shape
        shapes = [f.new_empty((0, *f.shape[-2:]), dtype=torch.float32) for f in feature_maps]
        return super().forward(image_list, shapes)


class Fp32RPNHead(RPNHead):
    """RPNHead whose outputs are float32 (the convs still run in fp16 under autocast), so decoding
    the proposals (torchvision's ``BoxCoder`` computes in the deltas' dtype) is float32 as in detectron2's
    ``Box2BoxTransform.apply_deltas`` (``deltas.float()``)."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


def intersection_over_anchor(anchors: Tensor, boxes: Tensor) -> Tensor:
    """``[A, B]``: area of (anchor i & box j) / area of anchor i (mmdet's ``iof`` mode); xyxy boxes."""
    lt = torch.max(anchors[:, None, :2], boxes[None, :, :2])
    rb = torch.min(anchors[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / box_area(anchors).clamp(min=1e-6)[:, None]


def ignore_anchor_labels(labels: Tensor, anchors: Tensor, ignore_boxes: Tensor, thresh: float) -> Tensor:
    """``labels`` (1 positive, 0 negative, -1 ignored) with every anchor that lies at least ``thresh``
    inside an ignore box set to -1."""
    if ignore_boxes.numel() == 0 or anchors.numel() == 0:
        return labels
    covered = intersection_over_anchor(anchors, ignore_boxes.to(anchors)).max(dim=1).values >= thresh
    return torch.where(covered, torch.full_like(labels, IGNORED), labels)


class WeightedRPN(RegionProposalNetwork):
    _image_weights: list[float] | None = None
    ignore_iof_thresh: float = 0.5  # set from model.rpn.ignore_iof_thresh by build_rpn

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        for i, (anchors_i, target) in enumerate(zip(anchors, targets, strict=True)):
            ignore = target.get("ignore_boxes")
            if ignore is not None and ignore.numel() > 0:
                labels[i] = ignore_anchor_labels(labels[i], anchors_i, ignore, self.ignore_iof_thresh)
        return labels, matched

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
