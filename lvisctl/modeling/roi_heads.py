"""RoI heads (the second stage), composed of box branches and mask branches: Mask R-CNN's standard head,
Cascade Mask R-CNN and Hybrid Task Cascade without the semantic branch (``model.roi_heads.type:
standard | cascade | htc``).

Layout (why: a cascade stage, a new mask head or a new classifier loss is one new class and one config
value, and every stage-2 technique works on every head type):

* ``ProposalSampler`` (``sampling.py``): match + sample training RoIs at one IoU threshold, with the
  self-training ignore boxes and image loss weights;
* ``BoxBranch`` (``box_branch.py``): extractor + box head + classification loss; losses, scores,
  decoding, refinement;
* ``MaskBranch`` (``mask_branch.py``): extractor + mask head (+ boundary, + MaskIoU) + mask loss + level
  rule; losses and ``predict`` for given boxes, optionally after the earlier stages' heads (HTC's flow);
* ``RoIStage`` = sampler + box branch + mask branch; the branches' modules are registered on the stage
  under Mask R-CNN's names (``box_head``, ``mask_head``, ...);
* ``StandardRoIHeads``: one stage whose modules sit directly on ``roi_heads`` (state-dict keys
  ``roi_heads.box_head.*`` as before the split, so old checkpoints and key mappings keep working);
* ``CascadeRoIHeads``: ``roi_heads.stages.{i}.*``; ``htc`` = cascade + interleaved execution + mask
  information flow.

Every head type has ``forward(features, proposals, image_sizes, targets) -> (results, losses)`` and
``predict_masks_and_iou(features, boxes, labels)`` (masks for GIVEN boxes and labels, e.g. for analysis
tools and TTA; HTC uses the last stage with the information flow). Eval results are per-image dicts
``boxes, scores, labels, masks`` (``mask_probs`` at RoI level with ``paste_masks=False``) and, with
Mask Scoring, ``mask_scores`` = cls score x predicted mask IoU (``scores`` stay the classification
scores, which the boxes keep).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import boxes as box_ops

from lvisctl.errors import LvisctlError
from lvisctl.modeling.box_branch import BoxBranch
from lvisctl.modeling.fpn import roi_feature_maps
from lvisctl.modeling.mask_branch import MaskBranch
from lvisctl.modeling.mask_iou_head import rescore_with_mask_iou
from lvisctl.modeling.sampling import ProposalSampler

ROI_HEAD_TYPES = ("standard", "cascade", "htc")


PRE_NMS_TOPK = (
    5000  # device path: candidates kept before NMS (torchvision's own GPU limit of its offset trick)
)


@dataclass
class DetectionPostprocess:
    """Per-class score threshold, per-class NMS, top-k (LVIS: 1e-4, 0.5, 300).

    On CUDA (``sync_free``; None = on CUDA) the same steps run without a host sync per class: the best
    ``PRE_NMS_TOPK`` candidates by score, then one NMS with per-class coordinate offsets (float64, so
    classes never overlap). torchvision's ``batched_nms`` loops over the classes above 5000 boxes on a GPU
    (two syncs per class: ~1,200 per image for sigmoid/EQL scores); this path costs two per image.
    """

    score_thresh: float = 1e-4
    nms_thresh: float = 0.5
    detections_per_img: int = 300
    sync_free: bool | None = None

    def __call__(
        self, scores: Tensor, boxes: Tensor, counts: list[int], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """``scores`` [N, K], ``boxes`` [N, K, 4] of all images' RoIs (split by ``counts``)."""
        results = []
        num_classes = scores.shape[1]
        for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes, strict=True):
            b = box_ops.clip_boxes_to_image(b, size)
            labels = torch.arange(1, num_classes + 1, device=b.device).expand_as(s)
            b, s, labels = b.reshape(-1, 4), s.reshape(-1), labels.reshape(-1)
            if s.is_cuda if self.sync_free is None else self.sync_free:
                results.append(self._on_device(b, s, labels))
                continue
            keep = torch.where(s > self.score_thresh)[0]
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.batched_nms(b, s, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": labels[keep]})
        return results

    def _on_device(self, b: Tensor, s: Tensor, labels: Tensor) -> dict[str, Tensor]:
        if s.numel() == 0:
            return {"boxes": b, "scores": s, "labels": labels}
        wh = b[:, 2:] - b[:, :2]
        ok = (s > self.score_thresh) & (wh >= 1e-2).all(dim=1)
        ranked, idx = torch.where(ok, s, -1.0).topk(min(s.numel(), PRE_NMS_TOPK))
        b, labels = b[idx], labels[idx]
        offsets = labels.double() * (b.double().max() + 1)  # classes never overlap, in float64
        keep = box_ops.nms(b.double() + offsets[:, None], ranked.double(), self.nms_thresh)
        keep = keep[: self.detections_per_img]
        keep = keep[ranked[keep] >= 0]  # invalid candidates (-1) sort last: drop those that filled the top-k
        return {"boxes": b[keep], "scores": ranked[keep], "labels": labels[keep]}


def register_branches(holder: nn.Module, box: BoxBranch, mask: MaskBranch) -> None:
    """Register the branches' modules on ``holder`` under their state-dict names (None: switched off)."""
    for name, module in {**box.modules(), **mask.modules()}.items():
        setattr(holder, name, module)


class RoIStage(nn.Module):
    """One cascade stage: its sampler (IoU threshold), box branch and mask branch."""

    def __init__(self, sampler: ProposalSampler, box: BoxBranch, mask: MaskBranch) -> None:
        super().__init__()
        register_branches(self, box, mask)
        self.sampler, self.box, self.mask = sampler, box, mask


class RoIHeads(nn.Module):
    """What every RoI-head type shares: mask prediction for given boxes, results, layout checks."""

    layout = "standard"
    post: DetectionPostprocess

    # the test-time settings, read from the post-processing step (``model.test`` / ``inference``)
    @property
    def score_thresh(self) -> float:
        return self.post.score_thresh

    @property
    def nms_thresh(self) -> float:
        return self.post.nms_thresh

    @property
    def detections_per_img(self) -> int:
        return self.post.detections_per_img

    @property
    def mask_size(self) -> int:
        return self.last_mask_branch().mask_size

    def last_mask_branch(self) -> MaskBranch:
        raise NotImplementedError

    def predict_masks_and_iou(
        self, features: list[Tensor], boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """Per image: mask probabilities [N_i, M, M] for GIVEN boxes (input coordinates) and contiguous
        labels 1..K, and with Mask Scoring each mask's predicted IoU [N_i] (else None). ``features`` are
        P2..P5 (``lvisctl.modeling.fpn.roi_feature_maps``)."""
        raise NotImplementedError

    def predict_masks(
        self, features: list[Tensor], boxes: list[Tensor], labels: list[Tensor]
    ) -> list[Tensor]:
        """RoI-level mask probabilities [N_i, 1, M, M] for given boxes and labels."""
        return [p[:, None] for p in self.predict_masks_and_iou(features, boxes, labels)[0]]

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
        *,
        paste_masks: bool = True,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: ``([], losses)``; eval: ``(detections with masks, {})``. Each head type supplies
        ``losses`` and ``detect`` (boxes, scores, labels); masks are attached here for every type
        (``paste_masks=False``: RoI-level ``mask_probs`` instead of pasted ``masks``)."""
        feats = roi_feature_maps(features)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return [], self.losses(feats, proposals, image_sizes, targets)
        detections = self.detect(feats, proposals, image_sizes)
        return self.attach_masks(feats, detections, image_sizes, paste=paste_masks), {}

    def losses(
        self,
        feats: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def detect(
        self, feats: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    def attach_masks(
        self,
        features: list[Tensor],
        results: list[dict[str, Tensor]],
        image_sizes: list[tuple[int, int]],
        paste: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Each detection's mask: pasted at input size as ``masks`` [N, 1, H, W], or with ``paste=False``
        the RoI-level ``mask_probs`` [N, 1, M, M] (inside each box; the predictor pastes them at the
        original size, which is both faster and what detectron2 does). With Mask Scoring add
        ``mask_scores`` (boxes keep ``scores``)."""
        probs, ious = self.predict_masks_and_iou(
            features, [r["boxes"] for r in results], [r["labels"] for r in results]
        )
        for i, (r, p, size) in enumerate(zip(results, probs, image_sizes, strict=True)):
            if paste:
                r["masks"] = paste_masks_in_image(p[:, None], r["boxes"], size, padding=1)
            else:
                r["mask_probs"] = p[:, None]
            if ious is not None:
                r["mask_scores"] = rescore_with_mask_iou(r["scores"], ious[i])
        return results

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        theirs = state_dict_layout(state_dict, prefix)
        if strict and theirs is not None and theirs != self.layout:
            raise LvisctlError(
                f"checkpoint: its RoI heads are model.roi_heads.type={theirs} but the config builds "
                f"{self.layout}; set model.roi_heads.type={theirs} (or start from a {self.layout} checkpoint)"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def state_dict_layout(state_dict: dict, prefix: str = "roi_heads.") -> str | None:
    """Which RoI-head type a state dict holds (None: no RoI-head keys under ``prefix``)."""
    keys = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
    if any(k.startswith("box_head.") for k in keys):
        return "standard"
    if any(k.startswith("stages.") for k in keys):
        # HTC's later mask heads have the information-flow conv
        return "htc" if any(".mask_head.conv_res." in f".{k}" for k in keys) else "cascade"
    return None


class StandardRoIHeads(RoIHeads):
    """Mask R-CNN's RoI heads: one stage, its modules directly on ``roi_heads``."""

    layout = "standard"

    def __init__(
        self, sampler: ProposalSampler, box: BoxBranch, mask: MaskBranch, post: DetectionPostprocess
    ) -> None:
        super().__init__()
        register_branches(self, box, mask)
        self.sampler, self.box, self.mask, self.post = sampler, box, mask, post

    def last_mask_branch(self) -> MaskBranch:
        return self.mask

    def predict_masks_and_iou(
        self, features: list[Tensor], boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        return self.mask.predict(features, boxes, labels)

    def losses(
        self,
        feats: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        samples = self.sampler.sample(proposals, targets)
        logits, deltas = self.box(feats, samples.boxes)
        losses = self.box.losses(logits, deltas, samples, targets)
        losses.update(self.mask.losses(feats, samples, targets))
        return losses

    def detect(
        self, feats: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        logits, deltas = self.box(feats, proposals)
        counts = [p.shape[0] for p in proposals]
        return self.post(self.box.scores(logits), self.box.decode(deltas, proposals), counts, image_sizes)


class CascadeRoIHeads(RoIHeads):
    """Cascade Mask R-CNN (``interleaved=False, mask_flow=False``) and HTC without the semantic branch
    (``interleaved=True, mask_flow=True``; Chen et al. 2019, mmdet's ``HybridTaskCascadeRoIHead``).

    Training, stage i (IoU threshold t_i, loss weight w_i): sample RoIs at t_i from the previous stage's
    refined boxes (+ GT), box losses; the mask branch trains on the same samples (cascade) or, interleaved,
    on RoIs re-sampled at t_i from the boxes this stage just regressed; with the flow, mask head i gets
    the features of heads 0..i-1 run on the same RoI features. Losses are ``s{i}.loss_*`` times w_i.
    Test: each stage classifies and refines; the scores are the mean of all stages' class scores (as
    detectron2's ``CascadeROIHeads``; mmdet averages the logits instead, which does not fit sigmoid / BAGS
    classifiers), boxes are the last stage's regression. Masks (``test_mask``): ``mean`` = every stage's
    mask head run on the final boxes (with the flow, after the earlier heads) and their probabilities
    averaged, as the HTC code does (mmdet ``HybridTaskCascadeRoIHead.simple_test`` + ``merge_aug_masks``);
    ``last`` = the last stage's mask only (detectron2's cascade). Mask Scoring's IoU is the last stage's.
    """

    def __init__(
        self,
        stages: Sequence[RoIStage],
        stage_loss_weights: Sequence[float],
        post: DetectionPostprocess,
        *,
        interleaved: bool,
        mask_flow: bool,
        test_mask: str = "mean",
    ) -> None:
        super().__init__()
        if len(stages) != len(stage_loss_weights) or not stages:
            raise ValueError("need one loss weight per cascade stage and at least one stage")
        self.stages = nn.ModuleList(stages)
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.post = post
        self.interleaved, self.mask_flow = interleaved, mask_flow
        if test_mask not in ("mean", "last"):
            raise ValueError(f"test_mask must be 'mean' or 'last', got {test_mask!r}")
        self.test_mask = test_mask
        self.layout = "htc" if interleaved and mask_flow else "cascade"

    def last_mask_branch(self) -> MaskBranch:
        return self.stages[-1].mask

    def previous_mask_heads(self, stage: int) -> list[nn.Module]:
        """The mask heads whose features flow into stage ``stage``'s head (none without the flow)."""
        return [s.mask.head for s in self.stages[:stage]] if self.mask_flow else []

    def predict_masks_and_iou(
        self, features: list[Tensor], boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        last = len(self.stages) - 1
        probs, ious = self.stages[last].mask.predict(features, boxes, labels, self.previous_mask_heads(last))
        if self.test_mask == "last" or last == 0:
            return probs, ious
        earlier = [
            self.stages[i].mask.predict(features, boxes, labels, self.previous_mask_heads(i))[0]
            for i in range(last)
        ]
        return [torch.stack(per_stage).mean(dim=0) for per_stage in zip(*earlier, probs, strict=True)], ious

    def losses(
        self,
        feats: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        boxes = proposals
        for i, (stage, weight) in enumerate(zip(self.stages, self.stage_loss_weights, strict=True)):
            samples = stage.sampler.sample(boxes, targets)
            logits, deltas = stage.box(feats, samples.boxes)
            stage_losses = stage.box.losses(logits, deltas, samples, targets)
            with torch.no_grad():
                boxes = stage.box.refine_samples(logits, deltas, samples, image_sizes)
            # interleaved: the mask branch trains on this stage's regressed boxes, re-sampled at its IoU
            mask_samples = stage.sampler.sample(boxes, targets) if self.interleaved else samples
            stage_losses.update(stage.mask.losses(feats, mask_samples, targets, self.previous_mask_heads(i)))
            losses.update({f"s{i}.{k}": weight * v for k, v in stage_losses.items()})
        return losses

    def detect(
        self, feats: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Boxes of the last stage with the class scores averaged over all stages."""
        boxes, stage_scores = proposals, []
        deltas = None
        for i, stage in enumerate(self.stages):
            logits, deltas = stage.box(feats, boxes)
            scores = stage.box.scores(logits)
            stage_scores.append(scores)
            if i < len(self.stages) - 1:
                boxes = stage.box.refine(deltas, boxes, scores.argmax(dim=1) + 1, image_sizes)
        assert deltas is not None
        scores = torch.stack(stage_scores).mean(dim=0)
        counts = [b.shape[0] for b in boxes]
        return self.post(scores, self.stages[-1].box.decode(deltas, boxes), counts, image_sizes)
