"""The merge of the paper's TTA (section 3.3) as steps, run in order over one image's candidates.

Each of the paper's four modifications is one step registered on :data:`lvisctl.registry.TTA_MERGE_STEPS`
and listed, in order, in ``inference.tta.steps``; each reads its own keys of ``inference.tta`` (its block,
:attr:`MergeStep.keys`, the first being its off switch) from :class:`TTASettings`:

* ``range_filter`` (1): pass ``s`` keeps boxes of size ``sqrt(w * h)`` in ``valid_ranges[s]``;
* ``rare_boost`` (2): scores of rare (common) classes raised on the odds scale (:func:`boost_scores`);
* ``nms_soft_nms`` (3): class-wise NMS at ``nms_iou``, then Soft-NMS, top ``k`` (off: NMS at
  ``inference.merge_iou``, the plain multi-scale merge);
* ``mask_from_best_scale`` (4): each kept detection's mask (and the box it is pasted in) from the pass
  chosen by its box size and mask/box area ratio (see :class:`MaskFromBestScale`).

A new modification is one class here (or in any module of ``lvisctl.inference``) registered with
``@TTA_MERGE_STEPS.register(name, help=...)``, its keys in the ``inference.tta`` block of
``configs/_base_/inference.yaml`` (read through ``TTASettings.extra``) and its name in ``steps``.

Masks are asked for, not assumed: a step that needs RoI masks says which (:meth:`MergeStep.masks_needed`)
and the caller fills them in :class:`MaskBank` before the step runs. With every pass's masks at hand (a model
that pastes its own masks, or ``inference.tta.survivor_masks=false``) the bank is full from the start; with
survivor masks the predictor runs the mask head only for what is asked, once per pass for the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from lvisctl.inference.soft_nms import soft_nms
from lvisctl.inference.tta_settings import TTASettings, boost_scores
from lvisctl.registry import TTA_MERGE_STEPS

Detections = dict[str, torch.Tensor]


def box_sizes(boxes: torch.Tensor) -> torch.Tensor:
    """``sqrt(w * h)`` of xyxy boxes (the size the valid ranges and the mask rule compare)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return torch.sqrt(wh[:, 0] * wh[:, 1])


class MaskBank:
    """RoI-level masks ``[R, R]`` (and Mask Scoring's mask scores) of one image's raw detections, by index in
    the concatenation of its passes: all known from the start (``masks`` given), or filled on request."""

    def __init__(
        self,
        count: int,
        masks: torch.Tensor | None = None,
        mask_scores: torch.Tensor | None = None,
        mask_size: int = 28,
    ) -> None:
        self.count = count
        self.masks = masks
        self.mask_scores = mask_scores
        self.mask_size = mask_size
        self.known = torch.full((count,), masks is not None, dtype=torch.bool)

    def missing(self, index: torch.Tensor) -> torch.Tensor:
        """The distinct indices of ``index`` whose masks are not known yet (ascending)."""
        index = torch.unique(index)
        return index[~self.known[index]]

    def put(self, index: torch.Tensor, masks: torch.Tensor, mask_scores: torch.Tensor | None) -> None:
        if self.masks is None:
            self.masks = masks.new_zeros((self.count, *masks.shape[1:]))
        self.masks[index.to(self.masks.device)] = masks.to(self.masks.dtype)
        if mask_scores is not None:
            if self.mask_scores is None:
                self.mask_scores = torch.zeros(self.count)
            self.mask_scores[index] = mask_scores.float().cpu()
        self.known[index] = True

    def get(self, index: torch.Tensor) -> torch.Tensor:
        if self.masks is None:
            return torch.zeros((0, self.mask_size, self.mask_size))
        assert bool(self.known[index].all()), "masks asked for before they were filled"
        return self.masks[index]


@dataclass
class MergeState:
    """One image's TTA candidates while the steps run: every pass's raw detections (``boxes`` ... in
    original pixels, concatenated in pass order), and the current candidates ``keep`` (indices into them,
    best first once a step ranked them) with their current scores; ``source`` the detection each takes its
    mask and paste box from (None: its own)."""

    passes: Sequence[Any]
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    pass_of: torch.Tensor
    bank: MaskBank
    boost: torch.Tensor
    k: int
    merge_iou: float
    keep: torch.Tensor
    keep_scores: torch.Tensor
    source: torch.Tensor | None = None

    @classmethod
    def of(
        cls, passes: Sequence[Any], bank: MaskBank, boost: torch.Tensor, k: int, merge_iou: float
    ) -> MergeState:
        scores = torch.cat([p.scores for p in passes]).float()
        return cls(
            passes=passes,
            boxes=torch.cat([p.boxes for p in passes]),
            scores=scores,
            labels=torch.cat([p.labels for p in passes]),
            pass_of=torch.cat([torch.full((len(p),), i, dtype=torch.int64) for i, p in enumerate(passes)]),
            bank=bank,
            boost=boost,
            k=k,
            merge_iou=merge_iou,
            keep=torch.arange(scores.numel()),
            keep_scores=scores,
        )

    def mask_source(self) -> torch.Tensor:
        return self.keep if self.source is None else self.source


class MergeStep:
    """One step of the merge. ``keys``: its block of ``inference.tta`` (the first is its switch)."""

    keys: tuple[str, ...] = ()

    def __init__(self, settings: TTASettings) -> None:
        self.settings = settings

    def masks_needed(self, state: MergeState) -> torch.Tensor:
        """Raw detections whose RoI masks this step reads (filled in ``state.bank`` before it runs)."""
        return torch.zeros(0, dtype=torch.int64)

    def __call__(self, state: MergeState) -> MergeState:
        raise NotImplementedError


def in_valid_range(passes: Sequence[Any], settings: TTASettings) -> torch.Tensor:
    """Modification 1: bool over the concatenated detections: kept by their pass's valid range."""
    ranges = dict(zip(settings.scales, settings.valid_ranges, strict=True))
    keep = []
    for p in passes:
        lo, hi = ranges[p.scale]
        size = box_sizes(p.boxes)
        keep.append((size >= lo) & (size < hi))
    return torch.cat(keep)


@TTA_MERGE_STEPS.register("range_filter", help="(1) each scale keeps the boxes of its size range")
class RangeFilter(MergeStep):
    keys = ("range_filter", "valid_ranges")

    def __call__(self, state: MergeState) -> MergeState:
        if not self.settings.range_filter or not state.keep.numel():
            return state
        ok = in_valid_range(state.passes, self.settings)[state.keep]
        return replace(state, keep=state.keep[ok], keep_scores=state.keep_scores[ok])


@TTA_MERGE_STEPS.register("rare_boost", help="(2) scores of rare (common) classes raised on the odds scale")
class RareBoost(MergeStep):
    """The image's ``boost`` per class (``tta_settings.class_boost``: ones with ``rare_boost=false``, so the
    step is then the identity, exactly)."""

    keys = ("rare_boost", "rare_factor", "common_factor")

    def __call__(self, state: MergeState) -> MergeState:
        boosted = boost_scores(state.keep_scores, state.boost[state.labels[state.keep]])
        return replace(state, keep_scores=boosted)


def merge_boxes(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    settings: TTASettings,
    *,
    merge_iou: float,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modification 3 (or the plain NMS when off): ``(indices, scores)`` of the top ``k`` survivors."""
    from torchvision.ops import batched_nms

    if not settings.soft_nms:
        keep = batched_nms(boxes.float(), scores.float(), labels, merge_iou)[:k]
        return keep, scores[keep]
    first = batched_nms(boxes.float(), scores.float(), labels, settings.nms_iou)
    keep, new_scores = soft_nms(
        boxes[first],
        scores[first],
        labels[first],
        method=settings.soft_nms_method,
        sigma=settings.soft_nms_sigma,
        iou_thresh=settings.soft_nms_iou,
        score_thresh=settings.soft_nms_score_thresh,
    )
    return first[keep[:k]], new_scores[:k].to(scores.dtype)


@TTA_MERGE_STEPS.register("nms_soft_nms", help="(3) class-wise NMS at nms_iou, then Soft-NMS, top k")
class NmsThenSoftNms(MergeStep):
    keys = (
        "soft_nms",
        "nms_iou",
        "soft_nms_method",
        "soft_nms_sigma",
        "soft_nms_iou",
        "soft_nms_score_thresh",
    )

    def __call__(self, state: MergeState) -> MergeState:
        keep = state.keep
        order, scores = merge_boxes(
            state.boxes[keep],
            state.keep_scores,
            state.labels[keep],
            self.settings,
            merge_iou=state.merge_iou,
            k=state.k,
        )
        return replace(state, keep=keep[order], keep_scores=scores)


@TTA_MERGE_STEPS.register(
    "mask_from_best_scale", help="(4) each mask from the scale its box size and shape pick"
)
class MaskFromBestScale(MergeStep):
    """Each kept detection's mask from the pass chosen by its box size and mask/box area ratio: thin masks
    (< ``thin_ratio`` of the box) from the highest scale that found it, the others from the scale where
    the box is closest to ``mask_box_size`` pixels; "found": that scale's same-class detection of IoU >=
    ``mask_match_iou`` with the kept box (else the next preferred scale; none: its own mask).

    The thin test reads the kept detection's own mask; it is asked for only where the two rules disagree
    (where they agree, the choice does not depend on it), so survivor masks compute no mask for nothing.
    """

    keys = ("mask_from_best_scale", "thin_ratio", "mask_box_size", "mask_match_iou")

    def _choices(self, state: MergeState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per kept detection: ``(source if thin, source if not thin, found if thin, found if not)``."""
        from torchvision.ops import box_iou

        kept, boxes, labels, passes = state.keep, state.boxes, state.labels, state.passes
        s = self.settings
        scales = sorted({p.scale for p in passes})
        factor = {p.scale: p.factor for p in passes}
        scale_of = torch.tensor([p.scale for p in passes], dtype=torch.int64)[state.pass_of]
        size = box_sizes(boxes[kept]).clamp(min=1e-6)
        iou = box_iou(boxes[kept].float(), boxes.float())
        iou[labels[kept][:, None] != labels[None, :]] = 0
        best = torch.zeros((kept.numel(), len(scales)))
        arg = torch.zeros((kept.numel(), len(scales)), dtype=torch.int64)
        thin_cost = torch.zeros((kept.numel(), len(scales)))
        size_cost = torch.zeros((kept.numel(), len(scales)))
        for j, scale in enumerate(scales):
            members = torch.nonzero(scale_of == scale).flatten()
            b, a = iou[:, members].max(dim=1)
            best[:, j], arg[:, j] = b, members[a]
            thin_cost[:, j] = float(len(scales) - j)  # thin masks: highest resolution first
            size_cost[:, j] = torch.log(
                size * factor[scale] / s.mask_box_size
            ).abs()  # box near mask_box_size
        out = []
        for cost in (thin_cost, size_cost):
            cost[best < s.mask_match_iou] = math.inf
            choice = cost.argmin(dim=1)
            found = torch.isfinite(cost.gather(1, choice[:, None]).squeeze(1))
            out.append((torch.where(found, arg.gather(1, choice[:, None]).squeeze(1), kept), found))
        (thin_src, _), (size_src, _) = out
        return thin_src, size_src, out[0][1], out[1][1]

    def masks_needed(self, state: MergeState) -> torch.Tensor:
        if not self.settings.mask_from_best_scale or not state.keep.numel():
            return torch.zeros(0, dtype=torch.int64)
        thin_src, size_src, _, _ = self._choices(state)
        return state.keep[thin_src != size_src]

    def __call__(self, state: MergeState) -> MergeState:
        if not self.settings.mask_from_best_scale or not state.keep.numel():
            return state
        thin_src, size_src, _, _ = self._choices(state)
        undecided = thin_src != size_src
        thin = torch.zeros(state.keep.numel(), dtype=torch.bool)
        if bool(undecided.any()):
            own = state.bank.get(state.keep[undecided])
            thin[undecided] = ((own > 0.5).float().mean(dim=(1, 2)) < self.settings.thin_ratio).cpu()
        return replace(state, source=torch.where(thin, thin_src, size_src))


def build_steps(settings: TTASettings) -> list[MergeStep]:
    """The steps ``settings.steps`` names, in order."""
    return [TTA_MERGE_STEPS.get(name)(settings) for name in settings.steps]


FillMasks = Callable[[Sequence[MergeState], Sequence[torch.Tensor]], None]


def run_merge(
    states: Sequence[MergeState],
    steps: Sequence[MergeStep],
    fill: FillMasks | None,
    image_sizes: Sequence[tuple[int, int]],
    mask_thresh: float,
) -> list[Detections]:
    """Run the steps over a batch of images' states, in lockstep so that ``fill(states, wanted)`` (None:
    every mask is known) computes the masks each step asks for once per pass for the whole batch; then
    the top ``k`` and the output of each image (see :func:`lvisctl.inference.tta.paper_merge`)."""
    states = list(states)
    for step in steps:
        if fill is not None:
            fill(states, [step.masks_needed(s) for s in states])
        states = [step(s) for s in states]
    for i, s in enumerate(states):  # the top k by the final scores (the steps' order is kept on ties)
        order = torch.sort(s.keep_scores, descending=True, stable=True).indices[: s.k]
        src = None if s.source is None else s.source[order]
        states[i] = replace(s, keep=s.keep[order], keep_scores=s.keep_scores[order], source=src)
    if fill is not None:
        fill(states, [s.mask_source() for s in states])
    return [output(s, size, mask_thresh) for s, size in zip(states, image_sizes, strict=True)]


def output(state: MergeState, image_size: tuple[int, int], mask_thresh: float) -> Detections:
    kept, source = state.keep, state.mask_source()
    out = {
        "boxes": state.boxes[kept],
        "scores": state.keep_scores.float(),
        "labels": state.labels[kept],
        "mask_probs": state.bank.get(source)[:, None],
        "paste_boxes": state.boxes[source],
        "image_size": torch.tensor([int(image_size[0]), int(image_size[1])]),
        "mask_thresh": torch.tensor(float(mask_thresh)),
    }
    if state.bank.mask_scores is not None:  # Mask Scoring: the mask score follows the mask
        ratio = state.bank.mask_scores[source] / state.scores[source].clamp(min=1e-12)
        out["mask_scores"] = (out["scores"] * ratio).clamp(0, 1)
    return out
