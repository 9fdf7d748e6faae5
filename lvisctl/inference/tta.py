"""The paper's test-time augmentation (section 3.3): multi-scale + flip with four modifications.

``tta-infer --tta paper`` runs every image at each test scale (``inference.tta.scales``, 400-1400 like
the multi-scale training) and, with ``inference.tta.flip``, mirrored as well. The passes are merged by
:func:`paper_merge`, where each modification is one config key (paper behaviour by default, each can be
switched off to ablate it):

1. ``valid_ranges``: pass ``s`` keeps only boxes whose size ``sqrt(w * h)`` in original-image pixels
   lies in ``[lo_s, hi_s)``: small boxes come from the high-resolution passes, large boxes from the
   low-resolution ones (a detector is most reliable for objects of its training sizes).
2. ``rare_boost`` / ``common_boost``: when the passes are merged, scores of rare (common) categories, by
   the checkpoint's r/c/f table, are multiplied by this factor (capped at 1, the results format's range).
   Within a category the order is unchanged; what moves is which detections survive the per-image
   top-300 and the score threshold, in favour of the rare classes.
3. ``nms_then_soft_nms``: class-wise NMS at ``nms_iou`` (0.7) removes the near-duplicates the passes
   produce, then class-wise Soft-NMS (:func:`soft_nms`, Gaussian by default) decays the remaining
   overlaps instead of deleting them; the top ``detections_per_image`` survive. Off: one class-wise NMS
   at ``inference.merge_iou``, the plain multi-scale test.
4. ``mask_from_best_scale``: each kept detection takes its mask from the pass chosen by its box size and
   its mask/box area ratio, not from whichever pass produced the surviving box. Boxes whose mask covers
   less than ``thin_ratio`` of the box (sticks, rings: "a good box is not a good mask") take the mask of
   the highest-resolution pass that found the object; the others that of the pass where the box is
   closest to ``mask_box_size`` pixels (a 28 x 28 mask head is sharpest for RoIs of that size).

How modification 4 gets a mask "from another scale": every pass keeps, for each of its raw detections
(before the range filter), the model's RoI-level mask probabilities (28 x 28 inside the box; mirrored back
for a flipped pass). A kept detection looks up, in the chosen pass, the detection of the same class that
overlaps it most (IoU >= ``mask_match_iou``) and takes that detection's mask and box: the merged output
carries ``mask_probs`` with their ``paste_boxes``, pasted once at the original size when the results are
encoded (:mod:`lvisctl.inference.postprocess`); if the chosen scale has none, the next preferred scale is
tried, down to the detection's own pass. We chose this over re-running the mask branch for the kept boxes
at another scale because it needs nothing but the model's call convention (works for every head type,
imported checkpoints included), costs no second backbone pass, and holds 12 passes x 300 RoI masks in
~11 MB instead of the feature pyramids of 6 scales. The price: the mask is that pass's own mask for its
own (overlapping, slightly different) box, and an object that pass did not detect cannot take its mask.
(A model that pastes its masks itself gets them cropped back to ``ROI_MASK_SIZE`` per box.)
With Mask Scoring (``mask_scores``), the mask score follows the mask: the final score times the source
detection's mask-IoU ratio ``mask_score / score``.

:func:`soft_nms` is the public, vectorised class-wise Soft-NMS (equal to ensemble-boxes' ``soft_nms``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.inference.predictor import Detections, Predictor

# Side of the RoI masks cropped from a model that pastes its masks itself (twice the usual 28).
ROI_MASK_SIZE = 56
_SOFT_NMS_METHODS = ("gaussian", "linear")


# ------------------------------------------------------------------------------ Soft-NMS
def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_thresh: float = 0.3,
    score_thresh: float = 0.001,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise Soft-NMS (Bodla et al. 2017): ``(keep, new_scores)``.

    ``boxes`` float[N, 4] xyxy, ``scores`` float[N], ``labels`` int[N]. Within each class the highest
    remaining box is taken and every other remaining box's score decays by ``exp(-iou^2 / sigma)``
    (gaussian) or by ``1 - iou`` when ``iou > iou_thresh`` (linear); a box survives while its decayed
    score is above ``score_thresh``. ``keep`` are the survivors' indices in descending order of their
    decayed scores ``new_scores``.

    Vectorised over classes: all classes advance one step together, so the loop runs as many times as
    the largest class has boxes. Classes are batched by ceil(log2(count)), so padding at most doubles the
    work, and a batch's pairwise decay factors are computed once when they fit in memory.
    """
    if method not in _SOFT_NMS_METHODS:
        raise ValueError(f"soft_nms method must be one of {_SOFT_NMS_METHODS}, got {method!r}")
    n = int(scores.numel())
    dtype = torch.promote_types(scores.dtype, torch.float32)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device), scores.new_zeros(0, dtype=dtype)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    _, cls, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    by_class = torch.argsort(cls, stable=True)  # box indices grouped by class
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(by_class)
    position[by_class] = torch.arange(n, device=labels.device) - starts[cls[by_class]]
    bucket = torch.ceil(torch.log2(counts.to(torch.float64))).long()
    final = torch.full((n,), -math.inf, dtype=dtype, device=scores.device)
    for b in torch.unique(bucket).tolist():
        classes = torch.nonzero(bucket == b).flatten()
        row_of = torch.full((counts.numel(),), -1, dtype=torch.int64, device=labels.device)
        row_of[classes] = torch.arange(classes.numel(), device=labels.device)
        members = torch.nonzero(row_of[cls] >= 0).flatten()
        width = int(counts[classes].max())
        index = torch.full((classes.numel(), width), -1, dtype=torch.int64, device=labels.device)
        index[row_of[cls[members]], position[members]] = members
        final_b = _soft_nms_padded(boxes, scores, index, method, sigma, iou_thresh, score_thresh)
        valid = index >= 0
        final[index[valid]] = final_b[valid]
    kept = torch.nonzero(final > score_thresh).flatten()
    order = torch.sort(final[kept], descending=True, stable=True).indices
    return kept[order], final[kept[order]]


def _soft_nms_padded(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    index: torch.Tensor,
    method: str,
    sigma: float,
    iou_thresh: float,
    score_thresh: float,
) -> torch.Tensor:
    """Soft-NMS of C classes at once. ``index`` [C, W] holds each class's box indices (-1 = padding).
    Returns [C, W] each box's score when it was taken (-inf for padding / boxes never taken)."""
    valid = index >= 0
    b = boxes[index.clamp(min=0)]  # [C, W, 4]
    current = torch.where(valid, scores[index.clamp(min=0)], torch.full_like(b[..., 0], -math.inf))
    taken = torch.full_like(current, -math.inf)
    # The decay factors of every pair, computed once, when they fit in memory; else row by row.
    decay_all = (
        _decay(b[:, :, None], b[:, None], method, sigma, iou_thresh)
        if b.shape[0] * b.shape[1] ** 2 <= _PAIRS_IN_MEMORY
        else None
    )
    rows = torch.arange(index.shape[0], device=index.device)
    for _ in range(index.shape[1]):
        best, arg = current.max(dim=1)
        active = best > score_thresh  # once a class's best is below the threshold, so is everything left
        if bool(active.all()):
            r, a = rows, arg
        elif bool(active.any()):
            r, a = rows[active], arg[active]
        else:
            break
        taken[r, a] = best[r]
        current[r, a] = -math.inf
        decay = (
            decay_all[r, a]
            if decay_all is not None
            else _decay(b[r, a][:, None], b[r], method, sigma, iou_thresh)
        )
        rest = current[r]
        current[r] = torch.where(torch.isfinite(rest), rest * decay, rest)  # -inf * 0 would be nan
    return taken


# Pairs (classes x boxes x boxes) up to which a Soft-NMS batch precomputes all decay factors.
_PAIRS_IN_MEMORY = 1 << 22


def _decay(a: torch.Tensor, b: torch.Tensor, method: str, sigma: float, iou_thresh: float) -> torch.Tensor:
    """Soft-NMS score factor of boxes ``b`` given the taken boxes ``a`` (broadcast, [..., 4])."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0)
    if method == "gaussian":
        return torch.exp(-(iou * iou) / sigma)
    return torch.where(iou > iou_thresh, 1 - iou, torch.ones_like(iou))


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class TTASettings:
    """``inference.tta`` of the config (see ``configs/_base_/inference.yaml`` for each key)."""

    scales: tuple[int, ...] = (400, 600, 800, 1000, 1200, 1400)
    max_size: int = 2333
    flip: bool = True
    range_filter: bool = True
    valid_ranges: tuple[tuple[float, float], ...] = (
        (64, math.inf),
        (32, math.inf),
        (0, math.inf),
        (0, 256),
        (0, 192),
        (0, 128),
    )
    rare_boost: bool = True
    rare_factor: float = 1.1
    common_factor: float = 1.0
    soft_nms: bool = True
    nms_iou: float = 0.7
    soft_nms_method: str = "gaussian"
    soft_nms_sigma: float = 0.5
    soft_nms_iou: float = 0.3
    soft_nms_score_thresh: float = 0.001
    mask_from_best_scale: bool = True
    thin_ratio: float = 0.25
    mask_box_size: float = 112.0
    mask_match_iou: float = 0.5

    @classmethod
    def from_config(cls, tta_cfg: Mapping[str, Any], scales: Sequence[int] | None = None) -> TTASettings:
        """Settings from ``inference.tta``; ``scales`` (``--scales``) replaces ``inference.tta.scales``."""
        scale_list = tuple(int(s) for s in (scales if scales is not None else tta_cfg["scales"]))
        ranges = tuple(
            (float(lo or 0), math.inf if hi is None else float(hi)) for lo, hi in tta_cfg["valid_ranges"]
        )
        settings = cls(
            scales=scale_list,
            max_size=int(tta_cfg["max_size"]),
            flip=bool(tta_cfg["flip"]),
            range_filter=bool(tta_cfg["range_filter"]),
            valid_ranges=ranges,
            rare_boost=bool(tta_cfg["rare_boost"]),
            rare_factor=float(tta_cfg["rare_factor"]),
            common_factor=float(tta_cfg["common_factor"]),
            soft_nms=bool(tta_cfg["soft_nms"]),
            nms_iou=float(tta_cfg["nms_iou"]),
            soft_nms_method=str(tta_cfg["soft_nms_method"]),
            soft_nms_sigma=float(tta_cfg["soft_nms_sigma"]),
            soft_nms_iou=float(tta_cfg["soft_nms_iou"]),
            soft_nms_score_thresh=float(tta_cfg["soft_nms_score_thresh"]),
            mask_from_best_scale=bool(tta_cfg["mask_from_best_scale"]),
            thin_ratio=float(tta_cfg["thin_ratio"]),
            mask_box_size=float(tta_cfg["mask_box_size"]),
            mask_match_iou=float(tta_cfg["mask_match_iou"]),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """User errors in the settings, as one line naming the config key."""
        if not self.scales or min(self.scales) < 1:
            raise LvisctlError("inference.tta.scales: expected positive test scales, e.g. [400, 800, 1200]")
        if self.range_filter and len(self.valid_ranges) != len(self.scales):
            raise LvisctlError(
                f"inference.tta.valid_ranges: {len(self.valid_ranges)} ranges for {len(self.scales)} test "
                f"scales {list(self.scales)}; give one [lo, hi] per scale or set "
                "inference.tta.range_filter=false"
            )
        if self.soft_nms_method not in _SOFT_NMS_METHODS:
            raise LvisctlError(
                f"inference.tta.soft_nms_method: {self.soft_nms_method!r} is not one of {_SOFT_NMS_METHODS}"
            )
        if self.range_filter:
            uncovered = covered_gaps(self.valid_ranges)
            if uncovered:
                lo, hi = uncovered[0]
                raise LvisctlError(
                    f"inference.tta.valid_ranges: no test scale keeps boxes of size {lo:g}-{hi:g} px; "
                    "the ranges must cover every size"
                )


def covered_gaps(ranges: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The box sizes in [0, inf) that no ``[lo, hi)`` range covers."""
    gaps, reach = [], 0.0
    for lo, hi in sorted(ranges):
        if lo > reach:
            gaps.append((reach, lo))
        reach = max(reach, hi)
    if reach < math.inf:
        gaps.append((reach, math.inf))
    return gaps


def class_boost(stats: CategoryStats, settings: TTASettings) -> torch.Tensor:
    """Score factor per contiguous label ``[K + 1]`` (index 0 = background): modification 2."""
    factor = torch.ones(stats.num_classes + 1)
    if settings.rare_boost:
        for i, freq in enumerate(stats.frequency, start=1):
            factor[i] = {"r": settings.rare_factor, "c": settings.common_factor}.get(freq, 1.0)
    return factor


# ------------------------------------------------------------------------------ passes and merge
@dataclass
class Pass:
    """One (scale, flip) pass of one image: raw detections in original-image pixels.

    ``roi_masks`` [N, R, R] are mask probabilities inside each box (un-mirrored; the model's RoI-level
    probabilities, on its device); ``factor`` the resize factor original -> test input (so a box of size
    ``z`` is ``z * factor`` pixels in this pass).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    roi_masks: torch.Tensor
    scale: int
    flip: bool
    factor: float
    mask_scores: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.scores.numel())


def box_sizes(boxes: torch.Tensor) -> torch.Tensor:
    """``sqrt(w * h)`` of xyxy boxes (the size the valid ranges and the mask rule compare)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return torch.sqrt(wh[:, 0] * wh[:, 1])


def in_valid_range(passes: Sequence[Pass], settings: TTASettings) -> torch.Tensor:
    """Modification 1: bool over the concatenated detections: kept by their pass's valid range."""
    ranges = dict(zip(settings.scales, settings.valid_ranges, strict=True))
    keep = []
    for p in passes:
        lo, hi = ranges[p.scale]
        size = box_sizes(p.boxes)
        keep.append((size >= lo) & (size < hi))
    return torch.cat(keep)


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


def mask_sources(
    kept: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    roi_masks: torch.Tensor,
    pass_of: torch.Tensor,
    passes: Sequence[Pass],
    settings: TTASettings,
) -> torch.Tensor:
    """Modification 4: for each kept detection (index into the concatenated raw detections), the index
    of the detection whose mask it takes. See the module docstring for the rule."""
    from torchvision.ops import box_iou

    if kept.numel() == 0:
        return kept
    scales = sorted({p.scale for p in passes})
    factor = {p.scale: p.factor for p in passes}
    scale_of = torch.tensor([passes[i].scale for i in pass_of.tolist()])
    ratio = (roi_masks[kept] > 0.5).float().mean(dim=(1, 2)).cpu()
    thin = ratio < settings.thin_ratio
    size = box_sizes(boxes[kept]).clamp(min=1e-6)
    iou = box_iou(boxes[kept].float(), boxes.float())
    iou[labels[kept][:, None] != labels[None, :]] = 0
    best = torch.zeros((kept.numel(), len(scales)))
    arg = torch.zeros((kept.numel(), len(scales)), dtype=torch.int64)
    cost = torch.zeros((kept.numel(), len(scales)))
    for j, s in enumerate(scales):
        members = torch.nonzero(scale_of == s).flatten()
        b, a = iou[:, members].max(dim=1)
        best[:, j], arg[:, j] = b, members[a]
        # thin masks: highest resolution first; others: box closest to mask_box_size pixels in the pass
        cost[:, j] = torch.where(
            thin,
            torch.full_like(size, float(len(scales) - j)),
            torch.log(size * factor[s] / settings.mask_box_size).abs(),
        )
    cost[best < settings.mask_match_iou] = math.inf
    choice = cost.argmin(dim=1)
    found = torch.isfinite(cost.gather(1, choice[:, None]).squeeze(1))
    return torch.where(found, arg.gather(1, choice[:, None]).squeeze(1), kept)


def paper_merge(
    passes: Sequence[Pass],
    settings: TTASettings,
    boost: torch.Tensor,
    image_size: tuple[int, int],
    *,
    k: int = 300,
    merge_iou: float = 0.5,
    mask_thresh: float = 0.5,
) -> Detections:
    """Section 3.3's merge of one image's passes -> detections (``boxes``, ``scores``, ``labels``, the
    RoI-level ``mask_probs`` [N, 1, R, R] of each mask's source detection with its box ``paste_boxes``,
    ``image_size`` and ``mask_thresh``, and ``mask_scores`` when the passes have them); no full-image mask is
    made here (:func:`lvisctl.inference.predictor.full_masks` / the results encoder paste them)."""
    boxes = torch.cat([p.boxes for p in passes])
    scores = torch.cat([p.scores for p in passes]).float()
    labels = torch.cat([p.labels for p in passes])
    roi_masks = torch.cat([p.roi_masks for p in passes])
    pass_of = torch.cat([torch.full((len(p),), i, dtype=torch.int64) for i, p in enumerate(passes)])
    candidates = torch.arange(scores.numel())
    if settings.range_filter and candidates.numel():
        candidates = candidates[in_valid_range(passes, settings)]
    boosted = (scores[candidates] * boost[labels[candidates]]).clamp(max=1.0)
    order, final_scores = merge_boxes(
        boxes[candidates], boosted, labels[candidates], settings, merge_iou=merge_iou, k=k
    )
    kept = candidates[order]
    if settings.mask_from_best_scale:
        source = mask_sources(kept, boxes, labels, roi_masks, pass_of, passes, settings)
    else:
        source = kept
    out = {
        "boxes": boxes[kept],
        "scores": final_scores,
        "labels": labels[kept],
        "mask_probs": roi_masks[source][:, None],
        "paste_boxes": boxes[source],
        "image_size": torch.tensor([int(image_size[0]), int(image_size[1])]),
        "mask_thresh": torch.tensor(float(mask_thresh)),
    }
    if all(p.mask_scores is not None for p in passes):
        mask_scores = torch.cat([p.mask_scores for p in passes]).float()
        ratio = mask_scores[source] / scores[source].clamp(min=1e-12)
        out["mask_scores"] = (final_scores * ratio).clamp(0, 1)
    return out


def paste_roi_masks(
    roi_masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], mask_thresh: float
) -> torch.Tensor:
    """RoI mask probabilities [N, R, R] inside ``boxes`` -> bool [N, H, W] (threshold at full size), equal to
    torchvision's ``paste_masks_in_image(..., padding=1) > mask_thresh`` without its float [N, H, W] stack."""
    from lvisctl.inference.postprocess import paste_masks

    return paste_masks(roi_masks[:, None].float(), boxes.float(), image_size, mask_thresh)[0]


def crop_roi_masks(masks: torch.Tensor, boxes: torch.Tensor, size: int = ROI_MASK_SIZE) -> torch.Tensor:
    """Full-input mask probabilities [N, 1, h, w] -> [N, size, size] inside each box (input coordinates):
    the RoI masks of a model that pastes its masks itself."""
    from torchvision.ops import roi_align

    if masks.shape[0] == 0:
        return masks.new_zeros((0, size, size)).float().cpu()
    pieces = []
    for idx in torch.arange(masks.shape[0], device=masks.device).split(50):
        rois = torch.cat(
            [torch.arange(idx.numel(), device=masks.device)[:, None].float(), boxes[idx].float()], 1
        )
        crop = roi_align(
            masks[idx].float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True
        )
        pieces.append(crop[:, 0].cpu())
    return torch.cat(pieces)


# ------------------------------------------------------------------------------ predictor
class TTAPredictor(Predictor):
    """The paper's test: every scale of ``settings.scales``, mirrored too with ``settings.flip``, merged by
    :func:`paper_merge`. Same output as :class:`Predictor` (plus ``mask_scores`` under Mask Scoring)."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        settings: TTASettings,
        boost: torch.Tensor,
        *,
        detections_per_image: int = 300,
        score_thresh: float = 0.0,
        mask_thresh: float = 0.5,
        amp: bool = True,
        merge_iou: float = 0.5,
    ) -> None:
        super().__init__(
            model,
            device,
            settings.scales,
            settings.max_size,
            detections_per_image=detections_per_image,
            score_thresh=score_thresh,
            mask_thresh=mask_thresh,
            amp=amp,
            merge_iou=merge_iou,
        )
        self.settings = settings
        self.boost = boost.float()
        self.merge_iou = float(merge_iou)

    def predict_batch(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        images = self.upload(images)  # once for the 2 x scales passes, not once per pass
        passes: list[list[Pass]] = [[] for _ in images]
        for scale in self.scales:
            for flip in (False, True) if self.settings.flip else (False,):
                for i, p in enumerate(self.predict_pass(images, scale, flip)):
                    passes[i].append(p)
        return [
            paper_merge(
                image_passes,
                self.settings,
                self.boost,
                tuple(image.shape[-2:]),
                k=self.detections_per_image,
                merge_iou=self.merge_iou,
                mask_thresh=self.mask_thresh,
            )
            for image_passes, image in zip(passes, images, strict=True)
        ]

    @torch.no_grad()
    def predict_pass(self, images: Sequence[torch.Tensor], scale: int, flip: bool) -> list[Pass]:
        """One (scale, flip) pass: the model's raw detections as :class:`Pass` in original pixels."""
        inputs = [self.prepare(img, scale) for img in images]
        if flip:
            inputs = [x.flip(-1) for x in inputs]
        outputs = self.run_model(inputs)
        return [
            self._to_pass(out, tuple(inp.shape[-2:]), tuple(img.shape[-2:]), scale, flip)
            for out, inp, img in zip(outputs, inputs, images, strict=True)
        ]

    def _to_pass(
        self,
        output: Mapping[str, torch.Tensor],
        input_hw: tuple[int, int],
        original_hw: tuple[int, int],
        scale: int,
        flip: bool,
    ) -> Pass:
        order = self.kept_order(output["scores"])
        (in_h, in_w), (height, width) = input_hw, original_hw
        boxes_in = output["boxes"][order].float()
        if "mask_probs" in output:  # lvisctl's model: its RoI-level masks as they are
            roi_masks = output["mask_probs"][order][:, 0].float()
        else:
            roi_masks = crop_roi_masks(output["masks"][order], boxes_in)
        if flip:  # back to the unmirrored image: x -> in_w - x, and each RoI mask mirrored
            boxes_in = torch.stack(
                [in_w - boxes_in[:, 2], boxes_in[:, 1], in_w - boxes_in[:, 0], boxes_in[:, 3]], dim=1
            )
            roi_masks = roi_masks.flip(-1)
        ratio = torch.tensor(
            [width / in_w, height / in_h, width / in_w, height / in_h], device=boxes_in.device
        )
        boxes = boxes_in * ratio
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        mask_scores = output.get("mask_scores")
        return Pass(
            boxes=boxes.cpu(),
            scores=output["scores"][order].float().cpu(),
            labels=output["labels"][order].long().cpu(),
            roi_masks=roi_masks,
            scale=scale,
            flip=flip,
            factor=math.sqrt((in_h / height) * (in_w / width)),
            mask_scores=None if mask_scores is None else mask_scores[order].float().cpu(),
        )


# ------------------------------------------------------------------------------ building predictors
def resolve_scales(cfg: Any, scales: Sequence[int] | None = None) -> list[int]:
    """The scales a run uses (``inference.tta.scales`` in paper mode, else ``inference.scales``), after
    writing ``scales`` (``--scales``) into that key of ``cfg``."""
    paper = cfg.inference.tta.mode == "paper"
    if scales is not None:
        if paper:
            cfg.inference.tta.scales = [int(s) for s in scales]
        else:
            cfg.inference.scales = [int(s) for s in scales]
    return list(cfg.inference.tta.scales if paper else cfg.inference.scales)


def predictor_for(model: nn.Module, stats: CategoryStats, cfg: Any, device: torch.device | str) -> Predictor:
    """The predictor ``cfg.inference`` asks for: plain (``inference.scales``) or the paper's TTA."""
    icfg = cfg.inference
    common = dict(
        detections_per_image=icfg.detections_per_image,
        score_thresh=icfg.score_thresh,
        mask_thresh=icfg.mask_thresh,
        amp=cfg.amp,
        merge_iou=icfg.merge_iou,
    )
    mode = icfg.tta.mode
    if mode == "plain":
        return Predictor(model, device, icfg.scales, icfg.max_size, **common)
    if mode != "paper":
        raise LvisctlError(f"inference.tta.mode: {mode!r} is not one of plain, paper")
    settings = TTASettings.from_config(icfg.tta)
    return TTAPredictor(model, device, settings, class_boost(stats, settings), **common)


def predictor_from_checkpoints(
    checkpoints: Sequence[tuple[Mapping[str, Any], object]],
    cfg: Any,
    device: torch.device | str,
    overrides: Sequence[str] = (),
) -> tuple[Any, CategoryStats]:
    """``[(loaded checkpoint, source), ...]`` -> ``(predictor, category stats)``.

    One checkpoint: :func:`predictor_for` with ``cfg``. Several: each model is built from its own config,
    with ``cfg.inference`` (the first checkpoint's, with overrides) for all, and their outputs are fused
    per image by :class:`lvisctl.inference.ensemble.EnsemblePredictor` (``inference.ensemble``).
    """
    from lvisctl.inference.ensemble import EnsemblePredictor, EnsembleSettings
    from lvisctl.inference.predictor import checkpoint_config, model_from_checkpoint

    predictors, first_stats = [], None
    for i, (ckpt, source) in enumerate(checkpoints):
        model_cfg = cfg
        if i > 0:
            model_cfg = checkpoint_config(ckpt, overrides)
            model_cfg.inference = cfg.inference
        model, stats, _ = model_from_checkpoint(ckpt, source=source, config=model_cfg)
        if first_stats is None:
            first_stats = stats
        elif stats.category_map.cat_ids != first_stats.category_map.cat_ids:
            raise LvisctlError(
                f"{source}: its categories differ from those of {checkpoints[0][1]}; "
                "an ensemble needs models of the same category set"
            )
        predictors.append(predictor_for(model, stats, model_cfg, device))
    if len(predictors) == 1:
        return predictors[0], first_stats
    settings = EnsembleSettings.from_config(cfg.inference.ensemble)
    return EnsemblePredictor(predictors, settings, cfg.inference.detections_per_image), first_stats
