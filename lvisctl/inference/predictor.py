"""Run a detection model on whole images: resize, batch, predict, map back to the original image.

The model (``lvisctl.modeling``, torchvision calling convention) does not resize: it sees exactly the
tensors we give it and answers in their coordinates. The predictor therefore owns the test-time scale:
each image is resized so its short side is ``scale`` (long side at most ``max_size``, as in Mask R-CNN
testing), the model runs in eval mode under ``no_grad`` (float16 autocast on CUDA), and boxes are mapped
back to the original resolution.

Masks stay at RoI level: the predictor asks the model for ``mask_probs`` [N, 1, M, M] (``model(images,
paste_masks=False)``, the probabilities inside each box) and keeps them with the boxes in original
pixels; they are pasted at the original size, in their boxes only and thresholded at ``mask_thresh``,
by whoever needs them: results files encode RLE from the box crops (:mod:`lvisctl.inference.postprocess`,
on the GPU when the probabilities are there), and :func:`full_masks` gives whole masks to the consumers
that need them (the ensemble's vote, drawings). This is detectron2's order (paste once at the output size)
and avoids 300 image-sized float maps per pass. A model without that keyword (any torchvision-convention
model that pastes ``masks`` itself) still works: its masks are resized and thresholded here.

The output is per-image tensors, so test-time augmentation and pseudo-labelling reuse it:
:meth:`Predictor.predict_scale` gives one scale's detections at original resolution, and
:meth:`Predictor.predict_batch` merges the scales with ``merge`` (by default concatenation followed by
class-wise NMS, the plain multi-scale test of mmdetection). The paper's test (section 3.3: flips, valid
box ranges, rare boost, NMS + Soft-NMS, mask from the right scale) is ``lvisctl.inference.tta``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lvisctl.inference.detections import (  # re-exported: the predictor's output type and helpers
    IMAGE_KEYS,
    Detections,
    concat,
    empty_detections,
    full_masks,
    merge_nms,
    select,
    top_k,
)
from lvisctl.inference.postprocess import surely_empty

__all__ = [
    "IMAGE_KEYS",
    "Detections",
    "PostOptions",
    "Predictor",
    "concat",
    "empty_detections",
    "full_masks",
    "merge_nms",
    "resize_image",
    "resized_size",
    "select",
    "spare_count",
    "top_k",
    "writing_spares",
]

MergeFn = Callable[[Sequence[Detections]], Detections]

# Masks are resized to the original resolution this many at a time, bounding the float memory of
# 300 full-image probability maps (~1.2 GB at 800x1333) to a sixth.
MASK_PASTE_CHUNK = 50


def resized_size(height: int, width: int, scale: int, max_size: int) -> tuple[int, int]:
    """Size after resizing the short side to ``scale`` with the long side capped at ``max_size``.

    Rounded to the nearest pixel as detectron2's ``ResizeShortestEdge`` does.
    """
    factor = scale / min(height, width)
    if max(height, width) * factor > max_size:
        factor = max_size / max(height, width)
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: torch.Tensor, scale: int, max_size: int) -> torch.Tensor:
    """``[3, H, W]`` float image -> resized copy (bilinear, as torchvision's detection transform)."""
    height, width = image.shape[-2:]
    size = resized_size(int(height), int(width), scale, max_size)
    if size == (height, width):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def accepts_paste_flag(model: nn.Module) -> bool:
    """Whether ``model`` (or the module a DDP wrapper holds) takes ``paste_masks=`` (lvisctl's model)."""
    forward = getattr(getattr(model, "module", model), "forward", None)
    try:
        return forward is not None and "paste_masks" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class PostOptions:
    """What a predictor keeps of the model's output (``inference.*`` keys; ``amp``: the config's)."""

    detections_per_image: int = 300
    score_thresh: float = 0.0
    mask_thresh: float = 0.5
    amp: bool = True
    merge_iou: float = 0.5  # the plain multi-scale merge's class-wise NMS

    @classmethod
    def from_config(cls, inference_cfg: Any, amp: bool) -> PostOptions:
        icfg = inference_cfg
        return cls(
            detections_per_image=int(icfg.detections_per_image),
            score_thresh=float(icfg.score_thresh),
            mask_thresh=float(icfg.mask_thresh),
            amp=bool(amp),
            merge_iou=float(icfg.merge_iou),
        )

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


class Predictor:
    """Whole-image inference with a model that follows the torchvision detection convention.

    ``predict`` / ``predict_batch`` take float images ``[3, H, W]`` in [0, 1] (any device) and return,
    per image: ``boxes`` float[N, 4] xyxy in original pixels, ``scores`` float[N] (descending),
    ``labels`` int64[N] (contiguous 1..K), with N <= ``detections_per_image`` (on the CPU); plus
    ``mask_scores`` float[N] when the model gives them (Mask Scoring). Masks: RoI-level ``mask_probs``
    float[N, 1, M, M] (on the model's device) with the per-image ``image_size`` (h, w) and ``mask_thresh``;
    :func:`full_masks` makes bool [N, H, W] of them. A model without ``paste_masks=`` gives ``masks``
    bool[N, H, W] instead. :class:`lvisctl.inference.tta.TTAPredictor` is the paper's multi-scale + flip
    test. Under :func:`writing_spares` (results writers only) N may exceed the cap by a margin of spares,
    and the per-image ``cap`` says where the writer stops.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        scales: Sequence[int] = (800,),
        max_size: int = 1333,
        *,
        merge: MergeFn | None = None,
        **post: Any,
    ) -> None:
        """``post``: the :class:`PostOptions` fields (``detections_per_image=``, ``score_thresh=``, ...);
        an unknown name is a ``TypeError`` as for any keyword."""
        if not scales:
            raise ValueError("at least one test scale is needed")
        options = PostOptions(**post)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.scales = tuple(int(s) for s in scales)
        self.max_size = int(max_size)
        self.detections_per_image = int(options.detections_per_image)
        self.score_thresh = float(options.score_thresh)
        self.mask_thresh = float(options.mask_thresh)
        self.amp = options.amp and self.device.type == "cuda"
        self.roi_masks = accepts_paste_flag(model)  # ask for RoI-level mask_probs
        self.empty_dropped = 0  # detections left out because their mask is surely empty (postprocess)
        self.spares = 0  # candidates kept beyond the cap for a results writer (see writing_spares)
        self.merge_iou = merge_iou = float(options.merge_iou)
        self.merge = merge or (lambda per_scale: merge_nms(per_scale, merge_iou, self.candidate_limit))

    @property
    def candidate_limit(self) -> int:
        """How many detections an image's output may hold: the cap, plus the spares a writer asked for."""
        return self.detections_per_image + self.spares

    def mark_cap(self, detections: Detections) -> Detections:
        """With spares: the per-image ``cap`` a results writer stops at (the rest refill empty masks)."""
        if self.spares:
            detections["cap"] = torch.tensor(self.detections_per_image)
        return detections

    def predict(self, image: torch.Tensor) -> Detections:
        """Detections for one image (see the class docstring)."""
        return self.predict_batch([image])[0]

    def upload(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The images on the device, copied once for all passes (scales, flips) and as decoded (uint8:
        a quarter of float32's bytes); pinned ones copy asynchronously. Resizing happens on the device."""
        return [img.to(self.device, non_blocking=img.is_pinned()) for img in images]

    def predict_batch(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        """Detections for several images, run as one model batch per scale."""
        images = self.upload(images)
        per_scale = [self.predict_scale(images, scale) for scale in self.scales]
        if len(per_scale) == 1:
            return per_scale[0]
        return [self.merge([dets[i] for dets in per_scale]) for i in range(len(images))]

    @torch.no_grad()
    def predict_scale(self, images: Sequence[torch.Tensor], scale: int) -> list[Detections]:
        """One test scale: resize, run the model, map back; thresholded and top-k, at original size.

        The model is asked for :data:`EMPTY_MARGIN` more detections than the cap (lvisctl's model: its
        ``roi_heads.post``), so the surely-empty masks left out before the top-k leave their slots to
        real detections."""
        inputs = [self.prepare(img, scale) for img in images]
        with candidate_margin(self.model, self.detections_per_image, enabled=self.roi_masks):
            outputs = self.run_model(inputs)
        return [
            self._to_original(out, tuple(inp.shape[-2:]), tuple(img.shape[-2:]))
            for out, inp, img in zip(outputs, inputs, images, strict=True)
        ]

    def prepare(self, image: torch.Tensor, scale: int) -> torch.Tensor:
        """An image as the model's input at ``scale``: float in [0, 1] on the device, resized."""
        return resize_image(_as_float(image).to(self.device), scale, self.max_size)

    def run_model(self, inputs: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The model on prepared inputs (float16 autocast on CUDA); its outputs in input coordinates."""
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        )
        with autocast:
            return self.model(inputs, paste_masks=False) if self.roi_masks else self.model(inputs)

    def kept_order(
        self, scores: torch.Tensor, exclude: torch.Tensor | None = None, limit: int | None = None
    ) -> torch.Tensor:
        """Indices of the detections above ``score_thresh`` (not ``exclude``), best first, at most
        ``limit`` (default ``detections_per_image``)."""
        limit = self.detections_per_image if limit is None else limit
        scores = scores.float()
        ok = scores >= self.score_thresh
        if exclude is not None:
            ok &= ~exclude.to(ok.device)
        kept = torch.nonzero(ok).flatten()
        return kept[torch.sort(scores[kept], descending=True, stable=True).indices[:limit]]

    def _to_original(
        self, output: dict[str, torch.Tensor], input_hw: tuple[int, int], original_hw: tuple[int, int]
    ) -> Detections:
        scores = output["scores"].float()
        (in_h, in_w), (height, width) = input_hw, original_hw
        ratio = torch.tensor([width / in_w, height / in_h, width / in_w, height / in_h], device=scores.device)
        boxes = output["boxes"].float() * ratio
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        empty, limit = None, self.detections_per_image
        if "mask_probs" in output:  # an empty mask never takes a slot under the cap (nor gets written)
            empty = surely_empty(output["mask_probs"], boxes, (height, width), self.mask_thresh)
            self.empty_dropped += int((empty & (scores >= self.score_thresh).cpu()).sum())
            limit = self.candidate_limit  # spares: cheap RoI-level masks, pasted only if a writer needs them
        order = self.kept_order(scores, empty, limit)
        boxes = boxes[order]
        out = {
            "boxes": boxes.cpu(),
            "scores": scores[order].cpu(),
            "labels": output["labels"][order].long().cpu(),
        }
        if "mask_probs" in output:  # pasted at the original size only where needed (module docstring)
            out["mask_probs"] = output["mask_probs"][order].float()
            out["image_size"] = torch.tensor([height, width])
            out["mask_thresh"] = torch.tensor(self.mask_thresh)
            self.mark_cap(out)
        else:
            out["masks"] = self._paste_masks(output["masks"], order, (height, width))
        if "mask_scores" in output:  # Mask Scoring: the segm file's score (boxes keep the cls score)
            out["mask_scores"] = output["mask_scores"][order].float().cpu()
        return out

    def _paste_masks(self, masks: torch.Tensor, order: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(Models that paste themselves.) Probabilities ``masks[order]`` ``[N, 1, h, w]`` at input size ->
        bool ``[N, H, W]`` at original size, on the CPU. Indexed chunk by chunk: copying all 300
        input-size masks at once costs ~1 GB."""
        if order.numel() == 0:
            return torch.zeros((0, *size), dtype=torch.bool)
        pieces = []
        for idx in order.split(MASK_PASTE_CHUNK):
            # Resample the probabilities, then threshold: binarising first would make edges blocky when
            # the test scale is smaller than the image.
            probs = F.interpolate(masks[idx].float(), size=size, mode="bilinear", align_corners=False)
            pieces.append((probs[:, 0] > self.mask_thresh).cpu())
        return torch.cat(pieces)


# Extra detections asked of the model beyond the per-image cap, as a fraction of it: the slots of masks that
# turn out empty (untrained models make many; trained ones a few per thousand) go to real detections.
EMPTY_MARGIN = 0.1


@contextlib.contextmanager
def candidate_margin(model: nn.Module, cap: int, *, enabled: bool = True) -> Any:
    """Raise the model's own top-k (lvisctl's ``roi_heads.post.detections_per_img``) to ``cap`` plus
    :data:`EMPTY_MARGIN` while it runs; any other model runs as it is."""
    post = getattr(getattr(model, "roi_heads", None), "post", None)
    old = getattr(post, "detections_per_img", None)
    if not enabled or not isinstance(old, int) or old != cap:
        yield
        return
    post.detections_per_img = cap + spare_count(cap)
    try:
        yield
    finally:
        post.detections_per_img = old


def spare_count(cap: int) -> int:
    """The margin above a per-image cap of ``cap``: :data:`EMPTY_MARGIN` of it, at least one."""
    return max(1, int(cap * EMPTY_MARGIN))


@contextlib.contextmanager
def writing_spares(predictor: Any) -> Any:
    """While a results writer runs ``predictor`` (one with ``spares``; any other runs as it is): each
    image's output keeps :func:`spare_count` candidates beyond the cap, best first, and says the cap
    (``cap``); :func:`lvisctl.inference.results.detections_to_records` writes the top ``cap`` whose mask
    pastes to something, so a mask that only turns out empty at the original size gives its slot to the
    next real detection. Every other consumer sees at most ``detections_per_image`` detections. An
    ensemble of predictors (``spares`` too) keeps spare fused detections; its members keep their caps."""
    if not hasattr(predictor, "spares"):
        yield
        return
    old = predictor.spares
    predictor.spares = spare_count(predictor.detections_per_image)
    try:
        yield
    finally:
        predictor.spares = old


def _as_float(image: torch.Tensor) -> torch.Tensor:
    return image.float() / 255 if image.dtype == torch.uint8 else image
