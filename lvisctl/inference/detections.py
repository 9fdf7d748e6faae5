"""Detection sets of one image (``Detections``: a dict of tensors) and the operations on them.

Every predictor returns one per image (:class:`lvisctl.inference.predictor.Predictor`); the TTA merge, the
ensemble's fusion and the results writer select, concatenate and cut them here. The plain multi-scale
merge (:func:`merge_nms`) is concatenation followed by class-wise NMS, mmdetection's plain multi-scale test.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lvisctl.inference.soft_nms import class_nms

Detections = dict[str, torch.Tensor]

# The per-image entries of a Detections dict (0-dim / [2] tensors); every other entry is per detection and
# is indexed / concatenated along its first dimension (see :func:`select`, :func:`concat`). ``cap`` is there
# only while a predictor keeps spare candidates for a results writer (:func:`writing_spares`).
IMAGE_KEYS = ("image_size", "mask_thresh", "cap")


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
    merged = concat(per_scale)
    keep = class_nms(merged["boxes"], merged["scores"], merged["labels"], iou_thresh)
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
