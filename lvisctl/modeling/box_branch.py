"""The box branch of one RoI-head stage: RoI features -> box head -> (class logits, box deltas), its
training losses, and box decoding / refinement for the next cascade stage and for post-processing.

Interface (every RoI-head type, ``lvisctl/modeling/roi_heads.py``): ``branch(features, boxes) -> (logits,
deltas)``; ``losses(logits, deltas, samples, targets)``; ``scores(logits) -> [N, K]``;
``decode(deltas, boxes) -> [N, K, 4]``; ``refine(...)`` -> per-image regressed boxes. The branch is an
``nn.Module`` holding its parts ``extractor``, ``head`` and ``cls_loss`` (state-dict keys
``roi_heads.box.head.*``; the flat keys of older checkpoints, ``roi_heads.box_head.*``, are renamed on load
by ``lvisctl.modeling.roi_keys``).

Seams: the RoI extractor (RoIAlign or deformable RoI pooling), the classification loss
(``lvisctl.losses.classification.ClassificationLoss``: softmax / sigmoid / EQL / BAGS; it also sets the
classifier's width and bias init), class-specific or class-agnostic regression (mmdet's HTC stages are
class-agnostic), and the box-coder weights (a cascade's later stages use finer ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops

from lvisctl.losses.classification import ClassificationLoss
from lvisctl.modeling.box_head import BoxHead
from lvisctl.modeling.mask_assign import fpn_levels
from lvisctl.modeling.poolers import boxes_to_rois
from lvisctl.modeling.sampling import RoISamples, proposal_weights

SMOOTH_L1_BETA = (
    1 / 9
)  # torchvision's Mask R-CNN box loss; the builder sets each head type's (model.roi_heads)


class BoxBranch(nn.Module):
    def __init__(
        self,
        extractor: nn.Module,
        head: BoxHead,
        cls_loss: ClassificationLoss,
        num_classes: int,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        # registration order = parameter order (optimizer state): extractor, head, classification loss
        self.extractor, self.head, self.cls_loss = extractor, head, cls_loss
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.box_coder = det_utils.BoxCoder(tuple(float(w) for w in bbox_reg_weights))
        self.smooth_l1_beta = SMOOTH_L1_BETA

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits [R, num_logits] and box deltas [R, 4 or (K + 1) * 4] of the boxes of all images."""
        rois = boxes_to_rois(boxes, features[0])
        return self.head(self.extractor(features, rois, levels=fpn_levels(rois[:, 1:])))

    # ------------------------------------------------------------------------------------ training
    def select(self, deltas: Tensor, labels: Tensor) -> Tensor:
        """The [R, 4] deltas of each RoI's label (all RoIs share one box when class-agnostic)."""
        deltas = deltas.float()
        if self.class_agnostic:
            return deltas
        rows = torch.arange(deltas.shape[0], device=deltas.device)
        return deltas.reshape(deltas.shape[0], -1, 4)[rows, labels]

    def losses(
        self, logits: Tensor, deltas: Tensor, samples: RoISamples, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        labels = torch.cat(samples.labels)
        weights = proposal_weights(targets, samples.labels)
        loss_cls = self.cls_loss.loss(logits, labels, weights)
        reg_targets = torch.cat(self.box_coder.encode(samples.matched_gt_boxes(targets), samples.boxes))
        pos = torch.where(labels > 0)[0]
        pred = self.select(deltas, labels)[pos]
        reg = F.smooth_l1_loss(pred, reg_targets[pos], beta=self.smooth_l1_beta, reduction="none").sum(dim=1)
        if weights is not None:
            reg = reg * weights[pos]
        # torchvision normalises by the number of sampled proposals, not by the positives
        return {"loss_classifier": loss_cls, "loss_box_reg": reg.sum() / max(labels.numel(), 1)}

    # ------------------------------------------------------------------------------------ boxes
    def scores(self, logits: Tensor) -> Tensor:
        """Foreground class scores [R, K] (the classification loss decides how)."""
        return self.cls_loss.scores(logits)

    def decode(self, deltas: Tensor, boxes: list[Tensor]) -> Tensor:
        """Regressed boxes per foreground class [R, K, 4] (one box repeated K times when agnostic)."""
        decoded = self.box_coder.decode(deltas.float(), boxes).reshape(deltas.shape[0], -1, 4)
        if self.class_agnostic:
            return decoded.expand(-1, self.num_classes, 4)
        return decoded[:, 1:]  # drop the background slot

    def refine(
        self, deltas: Tensor, boxes: list[Tensor], labels: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Each box regressed with its label's deltas (labels 1..K; any when class-agnostic), clipped to
        its image and detached: the next cascade stage's proposals."""
        pred = self.select(deltas.detach(), labels)
        boxes_cat = torch.cat(boxes).float()
        refined = self.box_coder.decode_single(pred, boxes_cat)
        out = refined.split([b.shape[0] for b in boxes])
        return [box_ops.clip_boxes_to_image(b, size) for b, size in zip(out, image_sizes, strict=True)]

    def refine_samples(
        self, logits: Tensor, deltas: Tensor, samples: RoISamples, image_sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Training-time refinement (mmdet's ``refine_bboxes``): positives regress with their GT class,
        the others with their predicted class; GT boxes added as proposals are dropped."""
        labels = torch.cat(samples.labels)
        predicted = self.scores(logits.detach()).argmax(dim=1) + 1
        labels = torch.where(labels > 0, labels, predicted)
        refined = self.refine(deltas, samples.boxes, labels, image_sizes)
        return [r[~g] for r, g in zip(refined, samples.is_gt, strict=True)]
