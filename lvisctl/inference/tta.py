"""The paper's test-time augmentation (section 3.3): multi-scale testing with four modifications.

``tta-infer --tta paper`` runs every image at each test scale (``inference.tta.scales``, 400-1400 like
the multi-scale training; the paper names no test scales, so these and ``valid_ranges`` are lvisctl's
choices) and, with ``inference.tta.flip`` (off by default: the paper never mentions flip; an extra of
lvisctl's), mirrored as well. The passes are merged by
:func:`paper_merge`, where each modification is one config key (paper behaviour by default, each can be
switched off to ablate it):

1. ``valid_ranges``: pass ``s`` keeps only boxes whose size ``sqrt(w * h)`` in original-image pixels
   lies in ``[lo_s, hi_s)``: small boxes come from the high-resolution passes, large boxes from the
   low-resolution ones (a detector is most reliable for objects of its training sizes).
2. ``rare_boost`` / ``common_boost``: when the passes are merged, scores of rare (common) categories, by
   the checkpoint's r/c/f table, are raised by this factor (:func:`boost_scores`: the odds times the
   factor, about ``score x factor`` for small scores, never above 1). Within a category the order is
   unchanged; what moves is which detections survive the per-image top-300 and the score threshold, in
   favour of the rare classes. The paper says "slightly increase"; 1.1 and the odds form are ours.
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

:func:`soft_nms` (``lvisctl/inference/soft_nms.py``, re-exported here) is the vectorised class-wise
Soft-NMS. It keeps the same boxes as ensemble-boxes' ``soft_nms``, but its scores are the decayed ones;
ensemble-boxes returns every kept box with its original, undecayed score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lvisctl.config import Config
from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.inference.predictor import Detections, Predictor
from lvisctl.inference.soft_nms import soft_nms
from lvisctl.inference.tta_settings import TTASettings, boost_scores, class_boost, covered_gaps

__all__ = [
    "Pass",
    "TTAPredictor",
    "TTASettings",
    "boost_scores",
    "class_boost",
    "covered_gaps",
    "paper_merge",
    "predictor_for",
    "predictor_from_checkpoints",
    "resolve_scales",
    "soft_nms",
]

# Side of the RoI masks cropped from a model that pastes its masks itself (twice the usual 28).
ROI_MASK_SIZE = 56


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
    boosted = boost_scores(scores[candidates], boost[labels[candidates]])
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
        # The merge's top-k takes the spares too (a writer's refill for masks that paste empty; the
        # top-k's truncation comes last, so its first ``detections_per_image`` are the same either way).
        return [
            self.mark_cap(
                paper_merge(
                    image_passes,
                    self.settings,
                    self.boost,
                    tuple(image.shape[-2:]),
                    k=self.candidate_limit,
                    merge_iou=self.merge_iou,
                    mask_thresh=self.mask_thresh,
                )
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
def resolve_scales(cfg: Config, scales: Sequence[int] | None = None) -> tuple[Config, list[int]]:
    """The config with ``scales`` (``--scales``) in the key a run reads them from (``inference.tta.scales``
    in paper mode, else ``inference.scales``), and the scales it uses."""
    paper = cfg.inference.tta.mode == "paper"
    if scales is not None:
        key = "inference.tta.scales" if paper else "inference.scales"
        cfg = cfg.replace({key: [int(s) for s in scales]}, source="--scales")
    return cfg, list(cfg.inference.tta.scales if paper else cfg.inference.scales)


def predictor_for(
    model: nn.Module, stats: CategoryStats, cfg: Config, device: torch.device | str
) -> Predictor:
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
    cfg: Config,
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
            model_cfg = checkpoint_config(ckpt, overrides).replace({"inference": cfg.inference})
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
