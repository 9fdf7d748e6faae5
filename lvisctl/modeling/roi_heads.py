"""Second stage of Mask R-CNN: proposal sampling, box branch, mask branch, test-time post-processing.

Built from torchvision parts (``Matcher``, ``BalancedPositiveNegativeSampler``, ``BoxCoder``,
``roi_align``, ``LevelMapper``, ``batched_nms``, ``project_masks_on_boxes``, ``paste_masks_in_image``).
Where each stage-2 technique of the paper plugs in (all chosen by config in ``build.py``):

* classification loss (softmax CE / sigmoid / EQL / Balanced GroupSoftmax): ``self.cls_loss``, a
  ``lvisctl.losses.classification.ClassificationLoss``; used by ``_box_losses`` and ``postprocess``
  (BAGS's ``scores`` recombine its group probabilities);
* RoI feature extractor (RoIAlign / deformable RoI pooling ``lvisctl/modeling/deform_roi_pool.py``):
  ``self.box_extractor`` / ``self.mask_extractor``, called as ``extractor(features, boxes, levels=levels)``;
* mask RoI level assignment (FPN box rule / paper Eq. 1 ``lvisctl/modeling/mask_assign.py``): training
  uses ``self.mask_level_fn(boxes, mask_areas) -> levels 0..3`` with the GT mask areas; at test time
  ``mask_level_assign="eq1"`` runs ``two_pass_mask_predict`` (box-term levels, estimate S_mask from the
  predicted mask, re-run only the RoIs whose level changes; ``eq1_single_pass`` skips the second pass);
* mask loss (BCE / balanced Dice + weighted BCE ``lvisctl/losses/balanced_mask.py``): ``self.mask_loss``;
* extra mask convs: ``MaskHead(num_convs=...)``;
* boundary branch (BMask R-CNN): with ``boundary_extractor`` (RoIAlign from P2 at M x M) the mask head is
  a ``BoundaryPreservingMaskHead`` called as ``mask_head(mask_roi_features, boundary_roi_features)``;
  training adds ``loss_boundary`` (``lvisctl/losses/boundary.py``, times ``boundary_loss_weight``);
* MaskIoU head (Mask Scoring R-CNN): ``mask_iou_head(mask_roi_features, mask_logits_of_the_class)``;
  training adds ``loss_mask_iou``; at test time each detection's score becomes cls score x predicted IoU.

All mask-branch passes go through ``_mask_forward`` (training and test share it).

Self-training (paper 2.1): background proposals with IoU >= ``ignore_iou`` with a ``target["ignore_boxes"]``
box are excluded before sampling (so they send no classification gradient), and ``target["loss_weight"]``
scales every loss term of that image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.ops import box_area, box_iou, roi_align
from torchvision.ops import boxes as box_ops
from torchvision.ops.poolers import LevelMapper

from lvisctl.losses.boundary import boundary_loss
from lvisctl.losses.classification import ClassificationLoss
from lvisctl.modeling.boundary_head import BoundaryPreservingMaskHead
from lvisctl.modeling.box_head import BoxHead
from lvisctl.modeling.fpn import FPN_STRIDES
from lvisctl.modeling.mask_assign import box_areas as eq1_box_areas
from lvisctl.modeling.mask_assign import mask_areas_in_boxes, two_pass_mask_predict
from lvisctl.modeling.mask_head import MaskHead
from lvisctl.modeling.mask_iou_head import MaskIoUHead, mask_iou_loss, mask_iou_targets

LevelFn = Callable[[Tensor, "Tensor | None"], Tensor]

# FPN paper Eq. 1 as in torchvision's MultiScaleRoIAlign: canonical 224 px box -> P4; clamped to P2..P5.
_FPN_LEVELS = LevelMapper(k_min=2, k_max=5, canonical_scale=224, canonical_level=4)


def box_levels(boxes: Tensor, mask_areas: Tensor | None = None) -> Tensor:
    """Standard FPN assignment: level index 0..3 (= P2..P5) from the box scale; mask areas are unused."""
    return _FPN_LEVELS([boxes])


class RoIAlignExtractor(nn.Module):
    """RoIAlign on one FPN level per RoI: ``(features P2..P5, boxes per image, levels[R]) -> [R, C, S, S]``.

    Unlike torchvision's ``MultiScaleRoIAlign`` the levels are an input, so the mask branch can use its
    own assignment. Same op, strides and sampling as torchvision's Mask R-CNN.
    """

    def __init__(self, output_size: int, sampling_ratio: int = 2, aligned: bool = False) -> None:
        super().__init__()
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features: list[Tensor], boxes: list[Tensor] | Tensor, levels: Tensor) -> Tensor:
        """``boxes``: per-image [N_i, 4] xyxy boxes, or already an [R, 5] (batch index, xyxy) tensor."""
        rois = _to_rois(boxes, features[0])
        num_rois, channels = rois.shape[0], features[0].shape[1]
        result: Tensor | None = None
        for level, (feat, stride) in enumerate(zip(features, FPN_STRIDES, strict=True)):
            idx = torch.where(levels == level)[0]
            if idx.numel() == 0 and result is not None:
                continue
            out = roi_align(
                feat, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio, self.aligned
            )
            if result is None:  # dtype from the op: roi_align's autocast kernel decides it
                result = out.new_zeros((num_rois, channels, *self.output_size))
            result[idx] = out.to(result.dtype)
        assert result is not None
        return result


def _to_rois(boxes: list[Tensor] | Tensor, like: Tensor) -> Tensor:
    """List of [N_i, 4] boxes -> [sum N_i, 5] (batch index, x1, y1, x2, y2) in float32 (a tensor of such
    rows passes through)."""
    if isinstance(boxes, Tensor):
        return boxes.to(device=like.device, dtype=torch.float32)
    rois = [torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois).to(device=like.device, dtype=torch.float32)


class LvisRoIHeads(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int,
        box_extractor: nn.Module,
        box_head: BoxHead,
        cls_loss: ClassificationLoss,
        mask_extractor: nn.Module,
        mask_head: MaskHead | BoundaryPreservingMaskHead,
        mask_loss: nn.Module,
        mask_resolution: int = 14,
        mask_level_fn: LevelFn = box_levels,
        mask_level_assign: str = "box",
        eq1_box_rule: str = "log2",
        eq1_single_pass: bool = False,
        boundary_extractor: nn.Module | None = None,
        boundary_loss_weight: float = 1.0,
        mask_iou_head: MaskIoUHead | None = None,
        mask_iou_loss_weight: float = 0.5,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        ignore_iou: float = 0.5,
        score_thresh: float = 1e-4,
        nms_thresh: float = 0.5,
        detections_per_img: int = 300,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_extractor = box_extractor
        self.box_head = box_head
        self.cls_loss = cls_loss
        self.mask_extractor = mask_extractor
        self.mask_head = mask_head
        self.mask_loss = mask_loss
        self.mask_level_fn = mask_level_fn  # training levels from (proposal boxes, GT mask areas)
        if mask_level_assign not in ("box", "eq1"):
            raise ValueError(f"mask_level_assign must be 'box' or 'eq1', got {mask_level_assign!r}")
        self.mask_level_assign = mask_level_assign  # test-time levels: box rule, or Eq. 1 in two passes
        self.eq1_box_rule = eq1_box_rule
        self.eq1_single_pass = eq1_single_pass
        # BMask R-CNN: with a boundary extractor, mask_head is a BoundaryPreservingMaskHead
        self.boundary_extractor = boundary_extractor
        self.boundary_loss_weight = boundary_loss_weight
        self.mask_iou_head = mask_iou_head
        self.mask_iou_loss_weight = mask_iou_loss_weight
        self.mask_size = 2 * mask_resolution  # the mask head upsamples its RoI features 2x
        self.proposal_matcher = det_utils.Matcher(
            fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False
        )
        self.fg_bg_sampler = det_utils.BalancedPositiveNegativeSampler(
            batch_size_per_image, positive_fraction
        )
        self.box_coder = det_utils.BoxCoder(tuple(bbox_reg_weights))
        self.ignore_iou = ignore_iou
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    # ---------------------------------------------------------------- training sample selection
    def _match(self, proposals: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per proposal: matched GT index (clamped) and label (0 background, -1 not sampled)."""
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        n = proposals.shape[0]
        if gt_boxes.numel() == 0:
            matched = torch.zeros(n, dtype=torch.int64, device=proposals.device)
            labels = torch.zeros(n, dtype=torch.int64, device=proposals.device)
        else:
            idx = self.proposal_matcher(box_iou(gt_boxes, proposals))
            matched = idx.clamp(min=0)
            labels = gt_labels[matched].to(torch.int64)
            labels[idx == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
            labels[idx == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1
        ignore = target.get("ignore_boxes")
        if ignore is not None and ignore.numel() > 0:
            labels[ignore_overlaps(proposals, labels, ignore.to(proposals), self.ignore_iou)] = -1
        return matched, labels

    def select_training_samples(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        """Add GT boxes to the proposals, match, sample; returns proposals, matched idx, labels, deltas."""
        proposals = [torch.cat([p, t["boxes"].to(p)]) for p, t in zip(proposals, targets, strict=True)]
        matched, labels = zip(
            *(self._match(p, t) for p, t in zip(proposals, targets, strict=True)), strict=True
        )
        pos, neg = self.fg_bg_sampler(list(labels))
        out_props, out_matched, out_labels, gt_for_props = [], [], [], []
        for p, m, lab, ps, ng, t in zip(proposals, matched, labels, pos, neg, targets, strict=True):
            keep = torch.where(ps | ng)[0]
            out_props.append(p[keep])
            out_matched.append(m[keep])
            out_labels.append(lab[keep])
            gt = t["boxes"].to(p) if t["boxes"].numel() else p.new_zeros((1, 4))
            gt_for_props.append(gt[m[keep]])
        deltas = self.box_coder.encode(gt_for_props, out_props)
        return out_props, out_matched, out_labels, torch.cat(deltas)

    # ---------------------------------------------------------------- losses
    def _box_losses(
        self, logits: Tensor, deltas: Tensor, labels: Tensor, reg_targets: Tensor, weights: Tensor | None
    ) -> dict[str, Tensor]:
        loss_cls = self.cls_loss.loss(logits, labels, weights)
        pos = torch.where(labels > 0)[0]
        deltas = deltas.float().reshape(deltas.shape[0], -1, 4)[pos, labels[pos]]
        reg = F.smooth_l1_loss(deltas, reg_targets[pos], beta=1 / 9, reduction="none").sum(dim=1)
        if weights is not None:
            reg = reg * weights[pos]
        # torchvision normalises by the number of sampled proposals, not by the positives
        return {"loss_classifier": loss_cls, "loss_box_reg": reg.sum() / max(labels.numel(), 1)}

    def _mask_forward(
        self, features: list[Tensor], rois: Tensor, levels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Mask branch on ``rois`` [R, 5]: (mask RoI features [R, C, S, S], mask logits [R, K + 1, M, M],
        boundary logits [R, K + 1, M, M] or None without the boundary branch)."""
        roi_features = self.mask_extractor(features, rois, levels=levels)
        if self.boundary_extractor is None:
            logits, _conv_features = self.mask_head(roi_features)
            return roi_features, logits, None
        # BMask R-CNN pools its boundary features from P2 only, at M x M (2x the mask RoI size)
        p2 = torch.zeros_like(levels)
        logits, boundary_logits = self.mask_head(
            roi_features, self.boundary_extractor(features, rois, levels=p2)
        )
        return roi_features, logits, boundary_logits

    def _mask_losses(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        matched: list[Tensor],
        labels: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        pos = [torch.where(lab > 0)[0] for lab in labels]
        boxes = [p[i] for p, i in zip(proposals, pos, strict=True)]
        gt_index = [m[i] for m, i in zip(matched, pos, strict=True)]
        mask_targets = torch.cat(
            [
                project_masks_on_boxes(t["masks"], b, g, self.mask_size)
                for t, b, g in zip(targets, boxes, gt_index, strict=True)
            ]
        )
        pos_labels = torch.cat([lab[i] for lab, i in zip(labels, pos, strict=True)])
        # S_mask / S_bbox of each positive proposal, measured on the projected (M x M) GT mask
        area_ratio = mask_targets.mean(dim=(1, 2)) if mask_targets.numel() else mask_targets.new_zeros(0)
        box_cat = torch.cat(boxes)
        levels = self.mask_level_fn(box_cat, area_ratio * box_area(box_cat))
        roi_features, logits, boundary_logits = self._mask_forward(
            features, _to_rois(boxes, features[0]), levels
        )
        rows = torch.arange(pos_labels.numel(), device=logits.device)
        logits = logits[rows, pos_labels]
        counts = [int(i.numel()) for i in pos]
        weights = [float(t.get("loss_weight", 1.0)) for t in targets]
        losses = {
            "loss_mask": image_weighted(
                self.mask_loss.loss, counts, weights, logits, mask_targets, area_ratio
            )
        }
        binary_targets = (mask_targets >= 0.5).to(mask_targets.dtype)
        if boundary_logits is not None:
            loss = image_weighted(
                boundary_loss, counts, weights, boundary_logits[rows, pos_labels], binary_targets
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

    # ---------------------------------------------------------------- inference
    def postprocess(
        self, logits: Tensor, deltas: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per class decoding, score threshold, per-class NMS, top-k (LVIS: 1e-4, 0.5, 300)."""
        counts = [p.shape[0] for p in proposals]
        boxes_all = self.box_coder.decode(deltas.float(), proposals)[:, 1:]  # [N, K, 4], drop background
        scores_all = self.cls_loss.scores(logits)  # [N, K]
        results = []
        for boxes, scores, size in zip(
            boxes_all.split(counts), scores_all.split(counts), image_sizes, strict=True
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, size)
            labels = torch.arange(1, self.num_classes + 1, device=boxes.device).expand_as(scores)
            boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results

    def _mask_outputs(
        self, features: list[Tensor], boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[Tensor, Tensor | None]:
        """RoI mask probabilities of each box's class [N, M, M] and, with the MaskIoU head, its predicted
        mask IoU per class [N, K + 1]; both for the concatenated boxes of all images."""
        rois = _to_rois(boxes, features[0])
        lab = torch.cat(labels).to(rois.device)

        def mask_fn(idx: Tensor, levels: Tensor) -> Tensor | tuple[Tensor, Tensor]:
            roi_features, logits, _ = self._mask_forward(features, rois[idx], levels)
            logits = logits[torch.arange(idx.numel(), device=logits.device), lab[idx]]
            probs = logits.float().sigmoid()
            if self.mask_iou_head is None:
                return probs
            return probs, self.mask_iou_head(roi_features, logits).float()

        if self.mask_level_assign == "eq1":
            # Eq. 1 at test: box-term levels first; RoIs whose estimated S_mask moves them are re-run
            out, _levels = two_pass_mask_predict(
                mask_fn,
                eq1_box_areas(rois[:, 1:]),
                box_rule=self.eq1_box_rule,
                single_pass=self.eq1_single_pass,
            )
        else:
            out = mask_fn(torch.arange(rois.shape[0], device=rois.device), box_levels(rois[:, 1:]))
        return (out, None) if isinstance(out, Tensor) else (out[0], out[1])

    def predict_masks(
        self, features: list[Tensor], boxes: list[Tensor], labels: list[Tensor]
    ) -> list[Tensor]:
        """RoI-level mask probabilities [N_i, 1, M, M] for given boxes and labels (contiguous 1..K).

        With ``level_assign: eq1`` this is the test-time re-assignment (``two_pass_mask_predict``): a first
        pass at the box-term levels estimates S_mask = S_bbox * fraction of the RoI mask above 0.5, and
        only the RoIs whose Eq. 1 level differs are pooled again at that level.
        """
        return [p[:, None] for p in self.predict_masks_and_iou(features, boxes, labels)[0]]

    def predict_masks_and_iou(
        self, features: list[Tensor], boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """Per image: mask probabilities [N_i, M, M] and, with the MaskIoU head, the predicted IoU of each
        mask for its label [N_i] (None without the head)."""
        counts = [b.shape[0] for b in boxes]
        if sum(counts) == 0:
            empty = [b.new_zeros((0, self.mask_size, self.mask_size)) for b in boxes]
            return empty, (None if self.mask_iou_head is None else [b.new_zeros(0) for b in boxes])
        probs, iou_pred = self._mask_outputs(features, boxes, labels)
        if iou_pred is None:
            return list(probs.split(counts)), None
        lab = torch.cat(labels).to(iou_pred.device)
        iou = iou_pred[torch.arange(lab.numel(), device=lab.device), lab]
        return list(probs.split(counts)), list(iou.split(counts))

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        feats = [features[k] for k in ("0", "1", "2", "3")]  # P2..P5 (P6 is RPN-only)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, matched, labels, reg_targets = self.select_training_samples(proposals, targets)
            logits, deltas = self.box_head(
                self.box_extractor(feats, proposals, levels=box_levels(torch.cat(proposals)))
            )
            labels_cat = torch.cat(labels)
            weights = proposal_weights(targets, labels)
            losses = self._box_losses(logits, deltas, labels_cat, reg_targets, weights)
            losses.update(self._mask_losses(feats, proposals, matched, labels, targets))
            return [], losses
        logits, deltas = self.box_head(
            self.box_extractor(feats, proposals, levels=box_levels(torch.cat(proposals)))
        )
        results = self.postprocess(logits, deltas, proposals, image_sizes)
        probs, ious = self.predict_masks_and_iou(
            feats, [r["boxes"] for r in results], [r["labels"] for r in results]
        )
        for i, (r, p, size) in enumerate(zip(results, probs, image_sizes, strict=True)):
            r["masks"] = paste_masks_in_image(p[:, None], r["boxes"], size, padding=1)
            if ious is not None:
                r["scores"] = rescore_with_mask_iou(r["scores"], ious[i])
        return results, {}


def ignore_overlaps(proposals: Tensor, labels: Tensor, ignore_boxes: Tensor, thresh: float) -> Tensor:
    """Mask of background proposals (label 0) whose IoU with some ignore box is >= ``thresh``."""
    if ignore_boxes.numel() == 0 or proposals.numel() == 0:
        return torch.zeros_like(labels, dtype=torch.bool)
    best = box_iou(proposals, ignore_boxes).max(dim=1).values
    return (labels == 0) & (best >= thresh)


def proposal_weights(targets: list[dict[str, Tensor]], labels: list[Tensor]) -> Tensor | None:
    """Each sampled proposal carries its image's ``loss_weight``; None when all are 1 (the common case)."""
    weights = [float(t.get("loss_weight", 1.0)) for t in targets]
    if all(w == 1.0 for w in weights):
        return None
    return torch.cat(
        [torch.full((lab.numel(),), w, device=lab.device) for lab, w in zip(labels, weights, strict=True)]
    )


def image_weighted(
    loss_fn: Callable[..., Tensor], counts: list[int], weights: list[float], *rows: Tensor
) -> Tensor:
    """A per-RoI-batch loss with self-training image weights: ``loss_fn(*rows)`` when every weight is 1,
    else sum_i w_i n_i L_i / sum_i n_i over images i with n_i > 0 RoIs (``rows`` are split by ``counts``)."""
    if all(w == 1.0 for w in weights):
        return loss_fn(*rows)
    total, parts = max(sum(counts), 1), []
    for w, n, *chunks in zip(weights, counts, *(r.split(counts) for r in rows), strict=True):
        if n:
            parts.append(loss_fn(*chunks) * (w * n / total))
    return torch.stack(parts).sum() if parts else rows[0].sum() * 0


def gt_inside_ratio(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor) -> Tensor:
    """Fraction of each matched GT instance's pixels inside its proposal (MS R-CNN's whole-instance IoU
    target); 0 for an empty GT mask."""
    inside = mask_areas_in_boxes(gt_masks, boxes, gt_index.to(boxes.device))
    full = (gt_masks > 0).flatten(1).sum(dim=1).to(inside)
    full = full[gt_index.to(full.device)] if full.numel() else inside.new_zeros(0)
    return torch.where(full > 0, inside / full.clamp_min(1), torch.zeros_like(inside))


def rescore_with_mask_iou(cls_scores: Tensor, mask_iou: Tensor) -> Tensor:
    """Mask Scoring: final score = classification score x predicted mask IoU of the detection's class.

    The regressed IoU is clamped to [0, 1] (its range by definition) so a slightly negative prediction
    cannot produce a negative score that downstream score thresholds would silently drop.
    """
    return cls_scores * mask_iou.clamp(0.0, 1.0).to(cls_scores.dtype)
