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
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.inference.postprocess import surely_empty

Detections = dict[str, torch.Tensor]
MergeFn = Callable[[Sequence[Detections]], Detections]

# The per-image entries of a Detections dict (0-dim / [2] tensors); every other entry is per detection and
# is indexed / concatenated along its first dimension (see :func:`select`, :func:`concat`). ``cap`` is there
# only while a predictor keeps spare candidates for a results writer (:func:`writing_spares`).
IMAGE_KEYS = ("image_size", "mask_thresh", "cap")

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


def empty_detections(height: int, width: int) -> Detections:
    return {
        "boxes": torch.zeros((0, 4)),
        "scores": torch.zeros((0,)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, height, width), dtype=torch.bool),
    }


def select(detections: Detections, index: torch.Tensor) -> Detections:
    """The detections ``index`` picks (per-detection entries indexed, per-image entries kept)."""
    return {key: value if key in IMAGE_KEYS else value[index] for key, value in detections.items()}


def concat(parts: Sequence[Detections]) -> Detections:
    """Several detection sets of one image as one: the per-detection entries all parts have, concatenated;
    the per-image entries of the first part. RoI-level masks keep their paste boxes (``paste_boxes``, else
    ``boxes``), so parts from the paper merge and from a plain pass mix."""
    if any("paste_boxes" in p for p in parts) and all("mask_probs" in p for p in parts):
        parts = [p if "paste_boxes" in p else {**p, "paste_boxes": p["boxes"]} for p in parts]
    keys = [key for key in parts[0] if all(key in p for p in parts)]
    return {key: parts[0][key] if key in IMAGE_KEYS else torch.cat([p[key] for p in parts]) for key in keys}


def top_k(detections: Detections, k: int) -> Detections:
    """The ``k`` highest-scoring detections, best first (stable: ties keep their order)."""
    order = torch.sort(detections["scores"], descending=True, stable=True).indices[:k]
    return select(detections, order)


def merge_nms(per_scale: Sequence[Detections], iou_thresh: float, k: int) -> Detections:
    """Plain multi-scale merge: concatenate every scale's detections, class-wise NMS, keep the top ``k``."""
    from torchvision.ops import batched_nms

    merged = concat(per_scale)
    keep = batched_nms(merged["boxes"], merged["scores"], merged["labels"], iou_thresh)
    return top_k(select(merged, keep), k)


def full_masks(detections: Detections, index: torch.Tensor | None = None) -> torch.Tensor:
    """Binary masks bool ``[N, H, W]`` on the CPU at the original size (of the detections ``index`` picks):
    the ``masks`` a detection set carries, else its RoI-level ``mask_probs`` pasted into ``paste_boxes``
    (default ``boxes``) at ``image_size`` and thresholded at ``mask_thresh``."""
    if "masks" in detections:
        masks = detections["masks"] if index is None else detections["masks"][index]
        return (masks[:, 0] if masks.ndim == 4 else masks).bool().cpu()
    from lvisctl.inference.postprocess import paste_masks

    picked = detections if index is None else select(detections, index)
    boxes = picked.get("paste_boxes", picked["boxes"])
    thresh = float(picked.get("mask_thresh", 0.5))
    return paste_masks(picked["mask_probs"], boxes, tuple(picked["image_size"].tolist()), thresh)[0]


def accepts_paste_flag(model: nn.Module) -> bool:
    """Whether ``model`` (or the module a DDP wrapper holds) takes ``paste_masks=`` (lvisctl's model)."""
    forward = getattr(getattr(model, "module", model), "forward", None)
    try:
        return forward is not None and "paste_masks" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


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
        detections_per_image: int = 300,
        score_thresh: float = 0.0,
        mask_thresh: float = 0.5,
        amp: bool = True,
        merge: MergeFn | None = None,
        merge_iou: float = 0.5,
    ) -> None:
        if not scales:
            raise ValueError("at least one test scale is needed")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.scales = tuple(int(s) for s in scales)
        self.max_size = int(max_size)
        self.detections_per_image = int(detections_per_image)
        self.score_thresh = float(score_thresh)
        self.mask_thresh = float(mask_thresh)
        self.amp = amp and self.device.type == "cuda"
        self.roi_masks = accepts_paste_flag(model)  # ask for RoI-level mask_probs
        self.empty_dropped = 0  # detections left out because their mask is surely empty (postprocess)
        self.spares = 0  # candidates kept beyond the cap for a results writer (see writing_spares)
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


def checkpoint_config(ckpt: dict[str, Any], overrides: Sequence[str] = ()) -> Any:
    """The checkpoint's resolved config merged over the current base (keys added since it was written get
    their defaults), then ``key=value`` ``overrides`` (e.g. ``inference.score_thresh=0.05``)."""
    from lvisctl.config import Config, load_config, upgrade_saved_config
    from lvisctl.config.loader import deep_merge, parse_overrides

    load_config(None, overrides)  # validates the overrides against the schema
    merged = upgrade_saved_config(ckpt["config"]).to_dict()
    return Config.wrap(deep_merge(merged, parse_overrides(overrides)))


def model_from_checkpoint(
    ckpt: dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    source: object = "checkpoint",
    config: Any = None,
) -> tuple[nn.Module, CategoryStats, Any]:
    """Rebuild the model of a loaded checkpoint: ``(model in eval mode on the CPU, category stats, config)``.

    ``config`` defaults to :func:`checkpoint_config` of ``ckpt`` and ``overrides``.
    """
    from lvisctl.modeling.build import build_model
    from lvisctl.modeling.weight_sources import without_backbone_weights

    config = checkpoint_config(ckpt, overrides) if config is None else config
    stats = CategoryStats.from_dict(ckpt["category_stats"])
    model = build_model(without_backbone_weights(config), stats)  # every weight is in the checkpoint
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise LvisctlError(
            f"{source}: weights do not fit the model its config builds ({first[:160]})"
        ) from None
    return model.eval(), stats, config


def load_checkpoint_model(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", overrides: Sequence[str] = ()
) -> tuple[nn.Module, CategoryStats, Any]:
    """:func:`model_from_checkpoint` for a checkpoint file (loaded weights-only); the model on ``device``."""
    from lvisctl.engine.checkpoint import load_checkpoint

    model, stats, config = model_from_checkpoint(
        load_checkpoint(path, map_location="cpu"), overrides, source=path
    )
    return model.to(device), stats, config
