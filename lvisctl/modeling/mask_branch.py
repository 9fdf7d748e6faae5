"""The mask branch of one RoI-head stage: mask RoI features -> mask head -> per-class mask logits, its
training losses, and test-time mask prediction for given boxes.

Interface (every RoI-head type, ``lvisctl/modeling/roi_heads.py``): ``losses(features, samples, targets,
previous)`` in training; ``predict(features, boxes, labels, previous) -> (probabilities [N_i, M, M],
predicted IoU [N_i] or None)`` at test time. ``previous`` are the mask heads of the earlier cascade
stages: with HTC's mask information flow they run first on the same RoI features and each passes its
last conv features on (``residual``) to the next; the standard and cascade heads pass none. Like the box
branch it owns no parameters: its modules (``mask_extractor``, ``mask_head``, ``mask_loss``,
``boundary_extractor``, ``mask_iou_head``) are registered on the holder under Mask R-CNN's names.

Where each stage-2 technique plugs in (all chosen by config in ``build.py``):

* mask RoI levels: ``MaskLevelAssigner`` (``lvisctl/modeling/mask_assign.py``): FPN box rule or paper
  Eq. 1 (training: GT mask areas; test: two passes);
* mask loss: ``loss(logits, targets, area_ratio)`` (``lvisctl/losses/mask_rcnn.py`` BCE or
  ``lvisctl/losses/balanced_mask.py`` Dice + weighted BCE);
* extra mask convs: the head's ``num_convs``;
* boundary branch (BMask R-CNN): with ``boundary_extractor`` (RoIAlign from P2 at M x M) the head is a
  ``BoundaryPreservingMaskHead``; training adds ``loss_boundary`` (``lvisctl/losses/boundary.py``);
* MaskIoU head (Mask Scoring R-CNN, on the last stage only): training adds ``loss_mask_iou``
  (``lvisctl/losses/mask_scoring.py``); at test time ``predict`` returns each mask's predicted IoU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_area

from lvisctl.losses.boundary import boundary_loss
from lvisctl.losses.mask_scoring import mask_iou_loss, mask_iou_targets
from lvisctl.modeling.mask_assign import MaskLevelAssigner, mask_areas_in_boxes
from lvisctl.modeling.mask_head import MaskHeadOutput
from lvisctl.modeling.mask_iou_head import MaskIoUHead
from lvisctl.modeling.mask_targets import project_masks_on_boxes
from lvisctl.modeling.poolers import boxes_to_rois
from lvisctl.modeling.sampling import RoISamples, image_weighted, image_weights


class MaskBranch:
    def __init__(
        self,
        extractor: nn.Module,
        head: nn.Module,
        loss: nn.Module,
        levels: MaskLevelAssigner,
        mask_size: int,
        boundary_extractor: nn.Module | None = None,
        boundary_loss_weight: float = 1.0,
        mask_iou_head: MaskIoUHead | None = None,
        mask_iou_loss_weight: float = 0.5,
    ) -> None:
        self.extractor, self.head, self.loss = extractor, head, loss
        self.levels = levels
        self.mask_size = mask_size  # M: the head upsamples its S x S RoI features 2x
        self.boundary_extractor = boundary_extractor
        self.boundary_loss_weight = boundary_loss_weight
        self.mask_iou_head = mask_iou_head
        self.mask_iou_loss_weight = mask_iou_loss_weight

    def modules(self) -> dict[str, nn.Module | None]:
        """Modules to register on the holder, by state-dict name (None: the switch is off)."""
        return {
            "mask_extractor": self.extractor,
            "mask_head": self.head,
            "mask_loss": self.loss,
            "boundary_extractor": self.boundary_extractor,
            "mask_iou_head": self.mask_iou_head,
        }

    def run(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, previous: Sequence[nn.Module] = ()
    ) -> tuple[Tensor, MaskHeadOutput]:
        """Pool ``rois`` [R, 5] at ``levels`` and run the earlier stages' heads (information flow) and this
        head: (mask RoI features [R, C, S, S], this head's output)."""
        roi_features = self.extractor(features, rois, levels=levels)
        boundary_features = None
        if self.boundary_extractor is not None:
            # BMask R-CNN pools its boundary features from P2 only, at M x M (2x the mask RoI size)
            boundary_features = self.boundary_extractor(features, rois, levels=torch.zeros_like(levels))
        residual = None
        for head in previous:
            residual = head.run(roi_features, boundary_features, residual, with_logits=False).features
        return roi_features, self.head.run(roi_features, boundary_features, residual)

    # ------------------------------------------------------------------------------------ training
    def losses(
        self,
        features: list[Tensor],
        samples: RoISamples,
        targets: list[dict[str, Tensor]],
        previous: Sequence[nn.Module] = (),
    ) -> dict[str, Tensor]:
        pos = samples.positive_index()
        boxes = [b[i] for b, i in zip(samples.boxes, pos, strict=True)]
        gt_index = [m[i] for m, i in zip(samples.matched, pos, strict=True)]
        mask_targets = torch.cat(
            [
                project_masks_on_boxes(t["masks"], b, g, self.mask_size)
                for t, b, g in zip(targets, boxes, gt_index, strict=True)
            ]
        )
        pos_labels = torch.cat([lab[i] for lab, i in zip(samples.labels, pos, strict=True)])
        # S_mask / S_bbox of each positive proposal, measured on the projected (M x M) GT mask
        area_ratio = mask_targets.mean(dim=(1, 2)) if mask_targets.numel() else mask_targets.new_zeros(0)
        box_cat = torch.cat(boxes)
        levels = self.levels.train_levels(box_cat, area_ratio * box_area(box_cat))
        roi_features, out = self.run(features, boxes_to_rois(boxes, features[0]), levels, previous)
        assert out.logits is not None
        rows = torch.arange(pos_labels.numel(), device=out.logits.device)
        logits = out.logits[rows, pos_labels]
        counts = [int(i.numel()) for i in pos]
        weights = image_weights(targets)
        losses = {
            "loss_mask": image_weighted(self.loss.loss, counts, weights, logits, mask_targets, area_ratio)
        }
        binary_targets = (mask_targets >= 0.5).to(mask_targets.dtype)
        if out.boundary_logits is not None:
            loss = image_weighted(
                boundary_loss, counts, weights, out.boundary_logits[rows, pos_labels], binary_targets
            )
            losses["loss_boundary"] = self.boundary_loss_weight * loss
        if self.mask_iou_head is not None:
            iou_pred = self.mask_iou_head(roi_features, logits).float()
            inside = torch.cat(
                [gt_inside_ratio(t["masks"], b, g) for t, b, g in zip(targets, boxes, gt_index, strict=True)]
            )
            iou_targets = mask_iou_targets(logits.detach().float().sigmoid(), binary_targets, inside)

            def iou_loss(pred: Tensor, lab: Tensor, tgt: Tensor) -> Tensor:
                return mask_iou_loss(pred, lab, tgt, self.mask_iou_loss_weight)

            losses["loss_mask_iou"] = image_weighted(
                iou_loss, counts, weights, iou_pred, pos_labels, iou_targets
            )
        return losses

    # ------------------------------------------------------------------------------------ inference
    def predict(
        self,
        features: list[Tensor],
        boxes: list[Tensor],
        labels: list[Tensor],
        previous: Sequence[nn.Module] = (),
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """Per image: mask probabilities [N_i, M, M] of each box's label (contiguous 1..K) and, with the
        MaskIoU head, the predicted IoU of each mask for its label [N_i] (None without the head).

        With ``level_assign: eq1`` this is the test-time re-assignment (``two_pass_mask_predict``): a first
        pass at the box-term levels estimates S_mask = S_bbox * fraction of the RoI mask above 0.5, and
        only the RoIs whose Eq. 1 level differs are pooled again at that level.
        """
        counts = [b.shape[0] for b in boxes]
        if sum(counts) == 0:
            empty = [b.new_zeros((0, self.mask_size, self.mask_size)) for b in boxes]
            return empty, (None if self.mask_iou_head is None else [b.new_zeros(0) for b in boxes])
        rois = boxes_to_rois(boxes, features[0])
        lab = torch.cat(labels).to(rois.device)

        def mask_fn(idx: Tensor, levels: Tensor) -> Tensor | tuple[Tensor, Tensor]:
            roi_features, out = self.run(features, rois[idx], levels, previous)
            assert out.logits is not None
            rows = torch.arange(idx.numel(), device=out.logits.device)
            logits = out.logits[rows, lab[idx]]
            probs = logits.float().sigmoid()
            if self.mask_iou_head is None:
                return probs
            iou = self.mask_iou_head(roi_features, logits).float()
            return probs, iou[rows, lab[idx]]

        out = self.levels.predict(mask_fn, rois[:, 1:])
        if isinstance(out, Tensor):
            return list(out.split(counts)), None
        return list(out[0].split(counts)), list(out[1].split(counts))


def gt_inside_ratio(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor) -> Tensor:
    """Fraction of each matched GT instance's pixels inside its proposal (MS R-CNN's whole-instance IoU
    target); 0 for an empty GT mask."""
    inside = mask_areas_in_boxes(gt_masks, boxes, gt_index.to(boxes.device))
    full = (gt_masks > 0).flatten(1).sum(dim=1).to(inside)
    full = full[gt_index.to(full.device)] if full.numel() else inside.new_zeros(0)
    return torch.where(full > 0, inside / full.clamp_min(1), torch.zeros_like(inside))
