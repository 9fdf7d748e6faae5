"""Test-time mask post-processing: RoI mask probabilities -> binary mask at image size -> compressed RLE.

The obvious way (torchvision's ``paste_masks_in_image`` then ``> thresh`` then pycocotools ``encode``)
builds a float ``[N, H, W]`` stack: 300 detections at 1333x800 are 1.28 GB, and encoding then scans every
pixel of every mask. A pasted mask is zero outside its (integer, expanded) box, so this module pastes
each mask only into its box, exactly as torchvision does (same padding, box expansion, int64 box
corners, bilinear ``F.interpolate`` with ``align_corners=False``, same clipping), thresholds there, and
computes the run lengths of the full-image mask from the box crop: in COCO's column-major order the
pixels outside the box only lengthen the first and last runs and the zero gaps between the box's columns.
pycocotools then only compresses the counts (``frPyObjects`` on uncompressed RLE). The output is the
same RLE, byte for byte (``tests/unit/test_postprocess.py``; ``benchmarks/postprocess_speed.py``).
Memory per image: the crops, never an image-sized float stack. On CUDA the resizing and thresholding
run on the GPU and the crops come back in one transfer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PADDING = 1  # torchvision's (and lvisctl's model's) paste padding


def expanded_int_boxes(boxes: torch.Tensor, mask_size: int, padding: int = PADDING) -> torch.Tensor:
    """torchvision's ``expand_boxes(boxes, (M + 2p) / M).to(int64)``: the boxes the padded masks fill."""
    scale = float(mask_size + 2 * padding) / mask_size
    b = boxes.float()
    w_half = (b[:, 2] - b[:, 0]) * 0.5 * scale
    h_half = (b[:, 3] - b[:, 1]) * 0.5 * scale
    x_c = (b[:, 2] + b[:, 0]) * 0.5
    y_c = (b[:, 3] + b[:, 1]) * 0.5
    out = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)
    return out.to(torch.int64)


def paste_crops(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], thresh: float = 0.5
) -> tuple[list[torch.Tensor], np.ndarray]:
    """Binary crops of the pasted masks and their places ``[x0, y0, x1, y1]`` in the image (int64 [N, 4]).

    ``probs``: RoI-level mask probabilities ``[N, 1, M, M]`` (or ``[N, M, M]``); ``boxes``: xyxy in image
    coordinates. Crops are bool tensors on ``probs``' device; an empty crop has a zero side.
    """
    if probs.ndim == 3:
        probs = probs[:, None]
    n, m = probs.shape[0], probs.shape[-1]
    im_h, im_w = image_size
    padded = F.pad(probs.float(), (PADDING,) * 4)
    ib = expanded_int_boxes(boxes.to(probs.device), m).cpu()
    places = np.zeros((n, 4), dtype=np.int64)
    crops: list[torch.Tensor] = []
    for i, (bx0, by0, bx1, by1) in enumerate(ib.tolist()):
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        x0, x1 = max(bx0, 0), min(bx1 + 1, im_w)
        y0, y1 = max(by0, 0), min(by1 + 1, im_h)
        if x1 <= x0 or y1 <= y0:  # the box lies outside the image: an empty mask
            crops.append(torch.zeros((0, 0), dtype=torch.bool, device=probs.device))
            places[i] = (0, 0, 0, 0)
            continue
        resized = F.interpolate(padded[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        crops.append(resized[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0] > thresh)
        places[i] = (x0, y0, x1, y1)
    return crops, places


def surely_empty(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], thresh: float = 0.5
) -> torch.Tensor:
    """bool [N] (on the CPU): masks known to paste to nothing without pasting them: the padded box misses
    the image (:func:`paste_crops`' rule), or no RoI probability is above ``thresh`` (bilinear resizing
    never exceeds its largest input, and the padding is 0). Sufficient, not necessary: a mask whose only
    peak vanishes when resized is dropped where it is encoded (``results.detections_to_records``), and a
    spare candidate takes its slot (``predictor.writing_spares``)."""
    if probs.ndim == 3:
        probs = probs[:, None]
    n, m = int(probs.shape[0]), int(probs.shape[-1])
    if n == 0:
        return torch.zeros(0, dtype=torch.bool)
    im_h, im_w = (int(v) for v in image_size)
    ib = expanded_int_boxes(boxes.to(probs.device), m)
    outside = (ib[:, 2].add(1).clamp(max=im_w) <= ib[:, 0].clamp(min=0)) | (
        ib[:, 3].add(1).clamp(max=im_h) <= ib[:, 1].clamp(min=0)
    )
    low = probs.reshape(n, -1).float().amax(dim=1) <= thresh
    return (outside | low).cpu()


def crop_counts(crop: np.ndarray, place: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Uncompressed COCO RLE counts (column-major, starting with a zero run) of the H x W mask that is
    ``crop`` at ``place`` and zero elsewhere; the work and memory are those of an ``H x crop width`` strip."""
    im_h, im_w = image_size
    x0, y0, x1, y1 = (int(v) for v in place)
    if crop.size == 0 or not crop.any():
        return np.array([im_h * im_w], dtype=np.int64)
    # The columns x0..x1 in full height: the crop with its zero rows above and below.
    strip = np.zeros((x1 - x0, im_h), dtype=np.uint8)
    strip[:, y0:y1] = crop.T
    v = strip.ravel()
    change = np.flatnonzero(v[1:] != v[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [v.size])))
    if v[0]:  # the counts start with the (here empty) zero run
        runs = np.concatenate(([0], runs))
    runs[0] += x0 * im_h
    tail = (im_w - x1) * im_h
    if v[-1]:
        if tail:
            runs = np.concatenate((runs, [tail]))
    else:
        runs[-1] += tail
    return runs


def encode_crops(
    crops: list[torch.Tensor], places: np.ndarray, image_size: tuple[int, int]
) -> list[dict[str, Any]]:
    """Compressed RLEs ``{"size": [h, w], "counts": str}`` of the pasted crops (json-ready)."""
    import pycocotools.mask as mask_utils

    if not crops:
        return []
    # One device -> host copy for all crops (on CUDA a copy per crop would synchronise 300 times).
    sizes = [c.numel() for c in crops]
    flat = torch.cat([c.reshape(-1) for c in crops]).to("cpu").numpy() if sum(sizes) else np.zeros(0, bool)
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    im_h, im_w = image_size
    uncompressed = []
    for i, c in enumerate(crops):
        crop = flat[offsets[i] : offsets[i + 1]].reshape(tuple(c.shape))
        counts = crop_counts(crop, places[i], image_size)
        uncompressed.append({"size": [im_h, im_w], "counts": counts.tolist()})
    rles = mask_utils.frPyObjects(uncompressed, im_h, im_w)
    return [{"size": [int(im_h), int(im_w)], "counts": r["counts"].decode("ascii")} for r in rles]


def masks_to_rles(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], thresh: float = 0.5
) -> list[dict[str, Any]]:
    """RoI mask probabilities ``[N, 1, M, M]`` + xyxy boxes at image scale -> compressed RLEs, identical to
    ``encode(paste_masks_in_image(probs, boxes, image_size, padding=1)[:, 0] > thresh)``."""
    if probs.shape[0] == 0:
        return []
    crops, places = paste_crops(probs, boxes, image_size, thresh)
    return encode_crops(crops, places, (int(image_size[0]), int(image_size[1])))


def paste_masks(
    probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], thresh: float = 0.5
) -> tuple[torch.Tensor, np.ndarray]:
    """Binary full-image masks bool ``[N, H, W]`` on the CPU, equal to ``paste_masks_in_image(probs, boxes,
    image_size, padding=1)[:, 0] > thresh``, and each mask's place ``[x0, y0, x1, y1]`` (its pixels lie
    inside; all zero for an empty mask). For the consumers that need whole masks (the ensemble's vote,
    drawings); results files never build them (:func:`masks_to_rles`)."""
    im_h, im_w = (int(v) for v in image_size)
    out = torch.zeros((int(probs.shape[0]), im_h, im_w), dtype=torch.bool)
    if probs.shape[0] == 0:
        return out, np.zeros((0, 4), dtype=np.int64)
    crops, places = paste_crops(probs, boxes, (im_h, im_w), thresh)
    sizes = [c.numel() for c in crops]
    if not sum(sizes):
        return out, places
    flat = torch.cat([c.reshape(-1) for c in crops]).to("cpu")  # one device -> host copy
    for i, piece in enumerate(flat.split(sizes)):
        if sizes[i]:
            x0, y0, x1, y1 = (int(v) for v in places[i])
            out[i, y0:y1, x0:x1] = piece.view(y1 - y0, x1 - x0)
    return out, places
