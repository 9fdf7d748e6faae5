"""The paper's test-time augmentation (section 3.3): multi-scale testing with four modifications.

``tta-infer --tta paper`` runs every image as a set of views: each test scale (``inference.tta.scales``,
400-1400 like the multi-scale training; the paper names no test scales, so these and ``valid_ranges`` are
lvisctl's choices), plain and with each augmentation of ``inference.tta.augmentations`` (``hflip`` also by
``inference.tta.flip``, off by default: the paper never mentions flip). A view is a chain of invertible
transforms (:mod:`lvisctl.inference.test_augmentations`, detectron2's ``DatasetMapperTTA`` +
``transform.inverse()``): the pass resizes, applies the view, runs the model and maps its boxes and RoI
masks back with the view's inverse; it knows no augmentation by name.

The passes are merged by the steps of ``inference.tta.steps`` (:mod:`lvisctl.inference.merge_steps`),
the paper's four modifications in order, each reading its own keys (paper behaviour by default, each with
an off switch to ablate it):

1. ``range_filter``: pass ``s`` keeps only boxes whose size ``sqrt(w * h)`` in original-image pixels lies
   in ``valid_ranges[s]``: small boxes from the high-resolution passes, large ones from the low-resolution.
2. ``rare_boost``: scores of rare (common) categories, by the checkpoint's r/c/f table, raised by
   ``rare_factor`` (``common_factor``) on the odds scale (:func:`boost_scores`: order within a class kept,
   never above 1; the paper says "slightly increase", 1.1 and the odds form are ours).
3. ``nms_soft_nms``: class-wise NMS at ``nms_iou`` (0.7), then class-wise Soft-NMS (:func:`soft_nms`,
   Gaussian by default); the top ``detections_per_image`` survive. Off (``soft_nms=false``): one
   class-wise NMS at ``inference.merge_iou``, the plain multi-scale test.
4. ``mask_from_best_scale``: each kept detection's mask from the pass chosen by its box size and mask/box
   area ratio: masks covering less than ``thin_ratio`` of the box (sticks, rings) from the highest scale
   that found the object, the others from the scale where the box is closest to ``mask_box_size`` pixels
   (a 28 x 28 mask head is sharpest for RoIs of that size). "Found": that scale's same-class detection
   with IoU >= ``mask_match_iou``; its mask and its box (``paste_boxes``) are taken (else the next
   preferred scale, down to the detection's own).

Survivor masks (``inference.tta.survivor_masks``, default on, lvisctl's model): a pass runs the backbone,
RPN and box head only and keeps its FPN maps; the mask head then runs only for the RoIs the merge reads
(the survivors' own masks where modification 4's two rules disagree, and each survivor's chosen source),
one call per pass for the whole batch, on exactly the boxes the full forward would have given those
detections. Every pass used to run it on its up to 300 detections (12 x 300 RoIs, ~85% of the time on
small images). The masks are the ones the full forward gives (per-RoI computations), so the results are
the same up to float rounding of the batched convolutions. The price is memory: the FPN maps P2-P5 of
every pass until the merge (~0.8 GB at 400-1400 with flip, float16 on CUDA); ``survivor_masks=false``
(or a model that pastes its masks itself, whose masks are cropped back to ``ROI_MASK_SIZE`` per box)
keeps every pass's RoI masks instead. With Mask Scoring (``mask_scores``) the mask score follows the
mask: the final score times the source detection's ``mask_score / score``.

:func:`soft_nms` (``lvisctl/inference/soft_nms.py``, re-exported here) is the vectorised class-wise
Soft-NMS. It keeps the same boxes as ensemble-boxes' ``soft_nms``, but its scores are the decayed ones;
ensemble-boxes returns every kept box with its original, undecayed score.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lvisctl.inference.merge_steps import (
    MaskBank,
    MergeState,
    box_sizes,
    build_steps,
    in_valid_range,
    merge_boxes,
    run_merge,
)
from lvisctl.inference.predictor import Detections, Predictor
from lvisctl.inference.soft_nms import soft_nms
from lvisctl.inference.survivor_masks import LazyMasks, detect_only, fill_masks, mask_size, splits
from lvisctl.inference.test_augmentations import Resize, Transform, View, views
from lvisctl.inference.tta_settings import TTASettings, boost_scores, class_boost, covered_gaps

__all__ = [
    "Pass",
    "TTAPredictor",
    "TTASettings",
    "boost_scores",
    "box_sizes",
    "class_boost",
    "covered_gaps",
    "in_valid_range",
    "merge_boxes",
    "paper_merge",
    "soft_nms",
]

# Side of the RoI masks cropped from a model that pastes its masks itself (twice the usual 28).
ROI_MASK_SIZE = 56


# ------------------------------------------------------------------------------ passes and merge
@dataclass
class Pass:
    """One view (scale + augmentations) of one image: raw detections in original-image pixels.

    ``roi_masks`` [N, R, R] are mask probabilities inside each box (mapped back by the view's inverse; the
    model's RoI-level probabilities, on its device), or None with survivor masks (``lazy`` then holds what
    the mask head needs); ``factor`` the resize factor original -> test input (so a box of size ``z`` is
    ``z * factor`` pixels in this pass); ``view`` the augmentations after the resize (e.g. ``("hflip",)``).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    roi_masks: torch.Tensor | None
    scale: int
    factor: float
    mask_scores: torch.Tensor | None = None
    view: tuple[str, ...] = ()
    lazy: LazyMasks | None = None

    def __len__(self) -> int:
        return int(self.scores.numel())


def eager_bank(passes: Sequence[Pass]) -> MaskBank:
    """Every pass's RoI masks (and mask scores when all passes have them), concatenated."""
    masks = torch.cat([p.roi_masks for p in passes])  # type: ignore[misc]
    scores = None
    if all(p.mask_scores is not None for p in passes):
        scores = torch.cat([p.mask_scores for p in passes]).float()  # type: ignore[misc]
    return MaskBank(int(masks.shape[0]), masks, scores)


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
    """Section 3.3's merge of one image's passes (with their RoI masks) -> detections (``boxes``,
    ``scores``, ``labels``, the RoI-level ``mask_probs`` [N, 1, R, R] of each mask's source detection with
    its box ``paste_boxes``, ``image_size`` and ``mask_thresh``, and ``mask_scores`` when the passes have
    them); no full-image mask is made here (:func:`lvisctl.inference.predictor.full_masks` / the results
    encoder paste them). The steps are ``settings.steps`` (:mod:`lvisctl.inference.merge_steps`)."""
    state = MergeState.of(passes, eager_bank(passes), boost, k, merge_iou)
    return run_merge([state], build_steps(settings), None, [image_size], mask_thresh)[0]


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
@dataclass
class ViewRun:
    """One view of a batch: each image's :class:`Pass`, and the FPN maps with survivor masks."""

    passes: list[Pass]
    features: Mapping[str, torch.Tensor] | None = None


class TTAPredictor(Predictor):
    """The paper's test: every view of ``settings`` (each scale, plain and with each augmentation), merged
    by ``settings.steps``. Same output as :class:`Predictor` (plus ``mask_scores`` under Mask Scoring)."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        settings: TTASettings,
        boost: torch.Tensor,
        **post: Any,
    ) -> None:
        """``post``: the :class:`~lvisctl.inference.predictor.PostOptions` fields, as for ``Predictor``."""
        super().__init__(model, device, settings.scales, settings.max_size, **post)
        settings.check()  # unknown augmentations / steps: one line before any image is read
        self.settings = settings
        self.boost = boost.float()
        self.views = views(settings.scales, settings.extra_views)
        self.steps = build_steps(settings)
        # survivor masks need the model in parts (lvisctl's model); any other runs whole, every mask kept
        self.survivor_masks = settings.survivor_masks and self.roi_masks and splits(self.model)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """:meth:`run_model`'s autocast, for the model's parts."""
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def predict_batch(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        images = self.upload(images)  # once for all passes, not once per pass
        lazy = self.survivor_masks
        runs = [self.run_view(images, view, lazy=lazy) for view in self.views]
        states = []
        for i in range(len(images)):
            passes = [run.passes[i] for run in runs]
            bank = (
                MaskBank(sum(map(len, passes)), mask_size=mask_size(self.model))
                if lazy
                else eager_bank(passes)
            )
            # The merge's top-k takes the spares too (a writer's refill for masks that paste empty; the
            # top-k's truncation comes last, so its first ``detections_per_image`` are the same either way).
            states.append(MergeState.of(passes, bank, self.boost, self.candidate_limit, self.merge_iou))

        def fill(states: Sequence[MergeState], wanted: Sequence[torch.Tensor]) -> None:
            fill_masks(self.model, runs, states, wanted, self.autocast)

        sizes = [tuple(image.shape[-2:]) for image in images]
        merged = run_merge(states, self.steps, fill if lazy else None, sizes, self.mask_thresh)
        return [self.mark_cap(m) for m in merged]

    def predict_pass(self, images: Sequence[torch.Tensor], view: View) -> list[Pass]:
        """One view of each image: the model's raw detections (with every RoI mask) in original pixels."""
        return self.run_view(images, view, lazy=False).passes

    @torch.no_grad()
    def run_view(self, images: Sequence[torch.Tensor], view: View, *, lazy: bool) -> ViewRun:
        """One view: resize (:class:`Resize`), augment, run the model (``lazy``: without the mask head,
        keeping the FPN maps), map back with the view's inverse transform."""
        inputs, inverses = [], []
        for img in images:
            resized = self.prepare(img, view.scale)
            transform, view_image = view.transforms(
                Resize(view.scale, self.max_size).get_transform(img), resized
            )
            inputs.append(view_image)
            inverses.append(transform.inverse())
        features = None
        if lazy:
            with self.autocast():
                outputs, features = detect_only(self.model, inputs)
        else:
            outputs = self.run_model(inputs)
        passes = [
            self._to_pass(out, inverse, tuple(inp.shape[-2:]), tuple(img.shape[-2:]), view, lazy)
            for out, inverse, inp, img in zip(outputs, inverses, inputs, images, strict=True)
        ]
        return ViewRun(passes, features)

    def _to_pass(
        self,
        output: Mapping[str, torch.Tensor],
        inverse: Transform,
        input_hw: tuple[int, int],
        original_hw: tuple[int, int],
        view: View,
        lazy: bool,
    ) -> Pass:
        order = self.kept_order(output["scores"])
        (in_h, in_w), (height, width) = input_hw, original_hw
        boxes_in = output["boxes"][order]
        roi_masks = None
        if lazy:
            pending = LazyMasks(boxes_in, output["labels"][order], output["scores"][order], inverse)
        else:
            pending = None
            if "mask_probs" in output:  # lvisctl's model: its RoI-level masks as they are
                roi_masks = output["mask_probs"][order][:, 0].float()
            else:
                roi_masks = crop_roi_masks(output["masks"][order], boxes_in.float())
            roi_masks = inverse.apply_roi_masks(roi_masks)
        boxes = inverse.apply_boxes(boxes_in.float())
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        mask_scores = output.get("mask_scores")
        return Pass(
            boxes=boxes.cpu(),
            scores=output["scores"][order].float().cpu(),
            labels=output["labels"][order].long().cpu(),
            roi_masks=roi_masks,
            scale=view.scale,
            factor=math.sqrt((in_h / height) * (in_w / width)),
            mask_scores=None if mask_scores is None else mask_scores[order].float().cpu(),
            view=view.augmentations,
            lazy=pending,
        )
