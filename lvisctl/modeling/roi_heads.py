"""RoI heads (the second stage), composed of box branches and mask branches: Mask R-CNN's standard head,
Cascade Mask R-CNN and Hybrid Task Cascade without the semantic branch (``model.roi_heads.type:
standard | cascade | htc``).

Layout (why: a cascade stage, a new mask head or a new classifier loss is one new class and one config
value, and every stage-2 technique works on every head type):

* ``ProposalSampler`` (``sampling.py``): match + sample training RoIs at one IoU threshold, with the
  self-training ignore boxes and image loss weights;
* ``BoxBranch`` (``box_branch.py``, an ``nn.Module``): extractor + box head + classification loss; losses,
  scores, decoding, refinement;
* ``MaskBranch`` (``mask_branch.py``, an ``nn.Module``): extractor + mask head (``model.mask_head.type``)
  + mask loss + level rule (+ ``MaskScorer`` on a ``ScoredMaskBranch``); losses and ``predict`` for given
  boxes, optionally after the earlier stages' heads (HTC's flow);
* ``RoIStage`` = sampler + box branch + mask branch (``roi_heads.stages.{i}.box.*`` / ``.mask.*``);
* ``StandardRoIHeads``: one stage's branches directly on ``roi_heads`` (``roi_heads.box.*``,
  ``roi_heads.mask.*``);
* ``CascadeRoIHeads``: ``roi_heads.stages.{i}.*``; ``HybridTaskCascadeRoIHeads`` (``htc.py``) overrides
  the two things HTC changes: the mask samples (interleaved) and the mask information flow.

Each type registers itself on ``lvisctl.registry.ROI_HEADS`` and builds itself from a ``RoIParts``
(``roi_parts.py``) in ``from_config``. State dicts of the flat layout before the branches were modules
(``roi_heads.box_head.*``, ``roi_heads.stages.{i}.mask_iou_head.*``) are renamed on load (``roi_keys.py``).

Every head type has ``forward(features, proposals, image_sizes, targets) -> (results, losses)`` and
``predict_masks_and_iou(features, boxes, labels)`` (masks for GIVEN boxes and labels, e.g. for analysis
tools and TTA; HTC uses the last stage with the information flow). Eval results are per-image dicts
``boxes, scores, labels, masks`` (``mask_probs`` at RoI level with ``paste_masks=False``) and, with
Mask Scoring, ``mask_scores`` = cls score x predicted mask IoU (``scores`` stay the classification
scores, which the boxes keep).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import paste_masks_in_image

from lvisctl.errors import LvisctlError
from lvisctl.modeling.box_branch import BoxBranch
from lvisctl.modeling.detection_postprocess import PRE_NMS_TOPK, DetectionPostprocess
from lvisctl.modeling.fpn import roi_feature_maps
from lvisctl.modeling.mask_branch import MaskBranch
from lvisctl.modeling.mask_head import MaskHeadBase
from lvisctl.modeling.mask_iou_head import MaskScorer
from lvisctl.modeling.roi_keys import upgrade_keys
from lvisctl.modeling.roi_parts import TEST_MASKS, RoIParts, pick
from lvisctl.modeling.sampling import ProposalSampler
from lvisctl.registry import ROI_HEADS

__all__ = [
    "PRE_NMS_TOPK",
    "CascadeRoIHeads",
    "DetectionPostprocess",
    "RoIHeads",
    "RoIStage",
    "StandardRoIHeads",
    "state_dict_layout",
]


def _part(*names: str) -> property:
    """A read-only alias of the part ``self.<names[0]>.<names[1]>...``; None where a part on the way is
    absent or None (a head without a boundary extractor, a branch without a Mask Scoring scorer)."""

    def get(self: object) -> nn.Module | None:
        part: object = self
        for name in names:
            part = getattr(part, name, None)
            if part is None:
                return None
        return part  # type: ignore[return-value]

    return property(get, doc=f"``{'.'.join(names)}``")


class FlatPartNames:
    """Read-only aliases of the parts under their flat names of before the branches were modules
    (``box_head`` = ``box.head``, ``mask_iou_head`` = ``mask.scorer.head`` or None, ...), for code and
    hooks written against them; the state-dict keys are the modules' own (``roi_keys.py``)."""

    box: BoxBranch
    mask: MaskBranch

    box_extractor = _part("box", "extractor")
    box_head = _part("box", "head")
    cls_loss = _part("box", "cls_loss")
    mask_extractor = _part("mask", "extractor")
    mask_head = _part("mask", "head")
    mask_loss = _part("mask", "loss")
    boundary_extractor = _part("mask", "head", "extractor")
    mask_iou_head = _part("mask", "scorer", "head")


class RoIStage(FlatPartNames, nn.Module):
    """One cascade stage: its sampler (IoU threshold), box branch and mask branch."""

    def __init__(self, sampler: ProposalSampler, box: BoxBranch, mask: MaskBranch) -> None:
        super().__init__()
        self.sampler, self.box, self.mask = sampler, box, mask  # box before mask: the parameter order


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
                r["mask_scores"] = MaskScorer.rescore(r["scores"], ious[i])
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
        # the flat layout of older checkpoints and of the checkpoint importers: renamed in place (the dict
        # is load_state_dict's own copy), before the children read their keys
        ours = [k for k in state_dict if k.startswith(prefix)]
        renamed = upgrade_keys({k: state_dict.pop(k) for k in ours}, prefix)
        state_dict.update(renamed)
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
    """Which RoI-head type a state dict holds (None: no RoI-head keys under ``prefix``); either layout."""
    keys = list(upgrade_keys({k[len(prefix) :]: None for k in state_dict if k.startswith(prefix)}, ""))
    if any(k.startswith("box.") for k in keys):
        return "standard"
    if any(k.startswith("stages.") for k in keys):
        # HTC's later mask heads have the information-flow conv
        return "htc" if any(".mask.head.conv_res." in f".{k}" for k in keys) else "cascade"
    return None


@ROI_HEADS.register("standard", help="Mask R-CNN: one box stage, one mask head")
class StandardRoIHeads(FlatPartNames, RoIHeads):
    """Mask R-CNN's RoI heads: one stage, its branches directly on ``roi_heads``."""

    layout = "standard"

    def __init__(
        self, sampler: ProposalSampler, box: BoxBranch, mask: MaskBranch, post: DetectionPostprocess
    ) -> None:
        super().__init__()
        self.sampler, self.box, self.mask, self.post = sampler, box, mask, post

    @classmethod
    def from_config(cls, parts: RoIParts) -> StandardRoIHeads:
        """One stage at ``fg_iou_thresh`` / ``bg_iou_thresh``, class-specific regression."""
        rcfg = parts.mcfg.roi_heads
        return cls(
            parts.sampler(float(rcfg.fg_iou_thresh), float(rcfg.bg_iou_thresh)),
            parts.box_branch(list(rcfg.bbox_reg_weights)),
            parts.mask_branch(mask_iou=bool(parts.mcfg.mask_head.mask_iou)),
            parts.postprocess(),
        )

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


@ROI_HEADS.register("cascade", help="Cascade Mask R-CNN: three box stages with rising IoU thresholds")
class CascadeRoIHeads(RoIHeads):
    """Cascade Mask R-CNN (Cai and Vasconcelos 2019); ``HybridTaskCascadeRoIHeads`` (``htc.py``) turns on two
    switches, ``mask_flow`` and ``interleaved``.

    Training, stage i (IoU threshold t_i, loss weight w_i): sample RoIs at t_i from the previous stage's
    refined boxes (+ GT), box losses; the mask branch trains on the same samples (``interleaved``: samples
    drawn again from the refined boxes) after ``previous_mask_heads(i)`` (none without ``mask_flow``).
    Losses are ``s{i}.loss_*`` times w_i.
    Test: each stage classifies and refines; the scores are the mean of all stages' class scores (as
    detectron2's ``CascadeROIHeads``; mmdet averages the logits instead, which does not fit sigmoid / BAGS
    classifiers), boxes are the last stage's regression. Masks (``test_mask``): ``mean`` = every stage's
    mask head run on the final boxes (with HTC's flow, after the earlier heads) and their probabilities
    averaged, as the HTC code does (mmdet ``HybridTaskCascadeRoIHead.simple_test`` + ``merge_aug_masks``);
    ``last`` = the last stage's mask only (detectron2's cascade). Mask Scoring's IoU is the last stage's.
    """

    layout = "cascade"

    def __init__(
        self,
        stages: Sequence[RoIStage],
        stage_loss_weights: Sequence[float],
        post: DetectionPostprocess,
        *,
        test_mask: str = "mean",
    ) -> None:
        super().__init__()
        if len(stages) != len(stage_loss_weights) or not stages:
            raise ValueError("need one loss weight per cascade stage and at least one stage")
        self.stages = nn.ModuleList(stages)
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.post = post
        if test_mask not in ("mean", "last"):
            raise ValueError(f"test_mask must be 'mean' or 'last', got {test_mask!r}")
        self.test_mask = test_mask

    # HTC's two changes (``htc.py``), as mmdet's ``mask_info_flow`` / ``interleaved``: the mask heads after
    # the first take the previous heads' features; each stage's mask branch trains on RoIs sampled again
    # from the boxes its box branch just regressed (a cascade's: on the box branch's samples)
    mask_flow = False
    interleaved = False

    @classmethod
    def from_config(cls, parts: RoIParts) -> CascadeRoIHeads:
        """One ``RoIStage`` per ``model.roi_heads.cascade.iou_thresholds`` entry, built with the cascade's
        own RoIAlign / SmoothL1 settings; Mask Scoring on the last stage (whose masks are the output)."""
        parts = parts.cascade()
        rcfg = parts.mcfg.roi_heads
        ious, weights, reg = parts.cascade_settings()
        last = len(ious) - 1
        stages = [
            RoIStage(
                parts.sampler(iou, iou),  # mmdet's cascade assigners: pos = neg threshold
                parts.box_branch(reg[i], class_agnostic=bool(rcfg.cascade.class_agnostic)),
                parts.mask_branch(
                    mask_iou=bool(parts.mcfg.mask_head.mask_iou) and i == last,
                    flow_in=cls.mask_flow and i > 0,
                ),
            )
            for i, iou in enumerate(ious)
        ]
        test_mask = pick("model.roi_heads.cascade.test_mask", TEST_MASKS, rcfg.cascade.test_mask)
        return cls(stages, weights, parts.postprocess(), test_mask=test_mask)

    def last_mask_branch(self) -> MaskBranch:
        return self.stages[-1].mask

    def previous_mask_heads(self, stage: int) -> list[MaskHeadBase]:
        """The mask heads whose features flow into stage ``stage``'s head: with ``mask_flow`` heads
        0..stage-1, else (a cascade) none."""
        return [s.mask.head for s in self.stages[:stage]] if self.mask_flow else []

    # ------------------------------------------------------------------------------------ heads
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
