"""The mask branch of one RoI-head stage: mask RoI features -> mask head -> per-class mask logits, its
training losses, and test-time mask prediction for given boxes.

Interface (every RoI-head type, ``lvisctl/modeling/roi_heads.py``): ``losses(features, samples, targets,
previous)`` in training; ``predict(features, boxes, labels, previous) -> (probabilities [N_i, M, M],
predicted IoU [N_i] or None)`` at test time. ``previous`` are the mask heads of the earlier cascade
stages: with HTC's mask information flow they run first on the same RoI features and each passes its
last conv features on (``residual``) to the next; the standard and cascade heads pass none. The branch is
an ``nn.Module`` holding ``extractor``, ``head``, ``loss`` (and ``ScoredMaskBranch``'s ``scorer``); the
flat keys of older checkpoints (``roi_heads.mask_head.*``) are renamed on load (``roi_keys.py``).

Where each stage-2 technique plugs in (all chosen by config in ``roi_parts.py``):

* mask head: ``model.mask_head.type`` from ``lvisctl.registry.MASK_HEADS`` (the contract is in
  ``mask_head.py``: ``forward(x, residual=None) -> MaskHeadOutput(logits, features)``; BMask R-CNN's
  boundary head, ``boundary_head.py``, pools its own P2 features and adds ``loss_boundary``);
* mask RoI levels: ``MaskLevelAssigner`` (``lvisctl/modeling/mask_assign.py``): FPN box rule or paper
  Eq. 1 (training: GT mask areas; test: two passes);
* mask loss: ``model.mask_head.loss`` from ``lvisctl.registry.MASK_LOSSES``, called as ``loss(logits,
  targets, area_ratio)`` (``lvisctl/losses/mask_rcnn.py`` BCE or ``lvisctl/losses/balanced_mask.py``);
* Mask Scoring (on the last stage only): ``ScoredMaskBranch`` adds ``loss_mask_iou`` and each mask's
  predicted IoU through its ``MaskScorer`` (``mask_iou_head.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_area

from lvisctl.modeling.mask_assign import MaskLevelAssigner
from lvisctl.modeling.mask_head import MaskHeadBase, PositiveMasks
from lvisctl.modeling.mask_iou_head import MaskScorer
from lvisctl.modeling.mask_targets import project_masks_on_boxes
from lvisctl.modeling.poolers import boxes_to_rois
from lvisctl.modeling.sampling import RoISamples, image_weights


class MaskBranch(nn.Module):
    def __init__(
        self,
        extractor: nn.Module,
        head: MaskHeadBase,
        loss: nn.Module,
        levels: MaskLevelAssigner,
        mask_size: int,
    ) -> None:
        super().__init__()
        # registration order = parameter order (optimizer state): extractor, head, loss (, scorer)
        self.extractor, self.head, self.loss = extractor, head, loss
        self.levels = levels
        self.mask_size = mask_size  # M: the head upsamples its S x S RoI features 2x

    def run(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, previous: Sequence[MaskHeadBase] = ()
    ) -> tuple[Tensor, Any]:
        """Pool ``rois`` [R, 5] at ``levels`` and run the earlier stages' heads (information flow) and this
        head: (mask RoI features [R, C, S, S], this head's output)."""
        x = self.extractor(features, rois, levels=levels)
        inputs = self.head.roi_inputs(features, rois, levels)
        residual = None
        for head in previous:
            residual = head.flow(x, residual, **inputs)
        return x, self.head(x, residual, **inputs)

    # ------------------------------------------------------------------------------------ training
    def losses(
        self,
        features: list[Tensor],
        samples: RoISamples,
        targets: list[dict[str, Tensor]],
        previous: Sequence[MaskHeadBase] = (),
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
        positives = PositiveMasks(
            labels=torch.cat([lab[i] for lab, i in zip(samples.labels, pos, strict=True)]),
            targets=mask_targets,
            counts=[int(i.numel()) for i in pos],
            weights=image_weights(targets),
            boxes=boxes,
            gt_index=gt_index,
            gt_masks=[t["masks"] for t in targets],
        )
        # S_mask / S_bbox of each positive proposal, measured on the projected (M x M) GT mask
        area_ratio = mask_targets.mean(dim=(1, 2)) if mask_targets.numel() else mask_targets.new_zeros(0)
        box_cat = torch.cat(boxes)
        levels = self.levels.train_levels(box_cat, area_ratio * box_area(box_cat))
        x, out = self.run(features, boxes_to_rois(boxes, features[0]), levels, previous)
        logits = positives.pick(out.logits)
        losses = {"loss_mask": positives.weighted(self.loss.loss, logits, mask_targets, area_ratio)}
        losses.update(self.head.losses(out, positives))
        losses.update(self.scorer_losses(x, logits, positives))
        return losses

    def scorer_losses(self, x: Tensor, logits: Tensor, positives: PositiveMasks) -> dict[str, Tensor]:
        """Losses of a mask scorer on this branch's masks (``ScoredMaskBranch``); none here."""
        return {}

    # ------------------------------------------------------------------------------------ inference
    def predict(
        self,
        features: list[Tensor],
        boxes: list[Tensor],
        labels: list[Tensor],
        previous: Sequence[MaskHeadBase] = (),
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """Per image: mask probabilities [N_i, M, M] of each box's label (contiguous 1..K) and, on a
        ``ScoredMaskBranch``, the predicted IoU of each mask for its label [N_i] (None here).

        With ``level_assign: eq1`` this is the test-time re-assignment (``two_pass_mask_predict``): a first
        pass at the box-term levels estimates S_mask = S_bbox * fraction of the RoI mask above 0.5, and
        only the RoIs whose Eq. 1 level differs are pooled again at that level.
        """
        counts = [b.shape[0] for b in boxes]
        if sum(counts) == 0:
            return [b.new_zeros((0, self.mask_size, self.mask_size)) for b in boxes], self.no_scores(boxes)
        rois = boxes_to_rois(boxes, features[0])
        lab = torch.cat(labels).to(rois.device)

        def mask_fn(idx: Tensor, levels: Tensor) -> Tensor | tuple[Tensor, Tensor]:
            x, out = self.run(features, rois[idx], levels, previous)
            rows = torch.arange(idx.numel(), device=out.logits.device)
            return self.mask_outputs(x, out.logits[rows, lab[idx]], lab[idx])

        out = self.levels.predict(mask_fn, rois[:, 1:])
        if isinstance(out, Tensor):
            return list(out.split(counts)), None
        return list(out[0].split(counts)), list(out[1].split(counts))

    def mask_outputs(self, x: Tensor, logits: Tensor, labels: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """What one test pass gives for RoI features ``x`` and the labels' mask ``logits``: probabilities."""
        return logits.float().sigmoid()

    def no_scores(self, boxes: list[Tensor]) -> list[Tensor] | None:
        """The mask IoUs of no detections (None: this branch predicts none)."""
        return None


class ScoredMaskBranch(MaskBranch):
    """A mask branch with Mask Scoring (MS R-CNN): ``scorer`` trains on the positives' masks
    (``loss_mask_iou``) and predicts each mask's IoU at test time."""

    def __init__(self, branch: MaskBranch, scorer: MaskScorer) -> None:
        super().__init__(branch.extractor, branch.head, branch.loss, branch.levels, branch.mask_size)
        self.scorer = scorer

    def scorer_losses(self, x: Tensor, logits: Tensor, positives: PositiveMasks) -> dict[str, Tensor]:
        return {"loss_mask_iou": self.scorer.loss(x, logits, positives)}

    def mask_outputs(self, x: Tensor, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return logits.float().sigmoid(), self.scorer.predict(x, logits, labels)

    def no_scores(self, boxes: list[Tensor]) -> list[Tensor]:
        return [b.new_zeros(0) for b in boxes]
