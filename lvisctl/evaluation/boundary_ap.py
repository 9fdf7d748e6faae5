"""Boundary AP (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation Evaluation", 2021).

Mask AP barely moves when a large mask's outline gets sloppy, because interior pixels dominate the IoU.
Boundary IoU compares only the pixels within ``d`` of each contour (the inner band ``G_d ∩ G``), with
``d = dilation_ratio * image diagonal`` (0.02 by default, at least 1 px); Boundary AP matches with
``min(mask IoU, boundary IoU)`` under the LVIS federated protocol, as the authors' boundary-iou-api does.
Masks truncated by the image border count the border as contour (the outside is background).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lvisctl.evaluation.federated_eval import federated_eval

DILATION_RATIO = 0.02


def boundary_width(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """The band width d in pixels: ``round(ratio * diagonal)``, at least 1 (Python rounding, as upstream)."""
    return max(1, int(round(dilation_ratio * float(np.sqrt(height**2 + width**2)))))


def mask_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """The inner boundary band: mask pixels whose (2d+1)^2 neighbourhood reaches outside the mask.

    Equivalent to ``mask - erode(mask, 3x3, d iterations)`` with zero padding; computed with an integral
    image, so the cost does not grow with ``d``.
    """
    m = (np.asarray(mask) > 0).astype(np.int32)
    h, w = m.shape
    padded = np.pad(m, d + 1)
    integral = padded.cumsum(0).cumsum(1)
    k = 2 * d + 1
    window = (
        integral[k : k + h, k : k + w]
        - integral[0:h, k : k + w]
        - integral[k : k + h, 0:w]
        + integral[0:h, 0:w]
    )
    eroded = window == k * k
    return (m.astype(bool) & ~eroded).astype(np.uint8)


def boundary_rle(rle: Mapping[str, Any], dilation_ratio: float = DILATION_RATIO) -> dict[str, Any]:
    """Compressed RLE of the boundary band of the mask ``rle``."""
    import hotcoco.mask

    mask = hotcoco.mask.decode(dict(rle))
    d = boundary_width(mask.shape[0], mask.shape[1], dilation_ratio)
    return hotcoco.mask.encode(np.asfortranarray(mask_boundary(mask, d)))


@dataclass(frozen=True)
class BoundaryCrop:
    """A mask's boundary band, kept only in the mask's box grown by ``d + 1`` (it is empty elsewhere)."""

    band: np.ndarray  # bool [h, w]
    x0: int
    y0: int
    area: int


def boundary_crop(rle: Mapping[str, Any], dilation_ratio: float = DILATION_RATIO) -> BoundaryCrop:
    """The boundary band of the mask ``rle``, computed on a crop around the mask.

    Exact: outside the mask's box every pixel is background, so a crop reaching ``d + 1`` past the box
    (clipped at the image, whose outside :func:`mask_boundary` pads as background) erodes exactly as
    the whole image does, at the cost of the object's size instead of the image's.
    """
    import pycocotools.mask as mask_utils

    h, w = (int(v) for v in rle["size"])
    d = boundary_width(h, w, dilation_ratio)
    coded = _coded(rle)
    x, y, bw, bh = mask_utils.toBbox(coded).tolist()
    if bw <= 0 or bh <= 0:
        return BoundaryCrop(np.zeros((0, 0), bool), 0, 0, 0)
    x0, y0 = max(int(x) - d - 1, 0), max(int(y) - d - 1, 0)
    x1, y1 = min(int(x + bw) + d + 1, w), min(int(y + bh) + d + 1, h)
    # Crop edges that are not image edges carry only background; padding them as background is exact.
    band = mask_boundary(decode_crop(coded["counts"], h, x0, y0, x1, y1), d).astype(bool)
    return BoundaryCrop(band, x0, y0, int(np.count_nonzero(band)))


def rle_counts(counts: bytes) -> np.ndarray:
    """pycocotools' ``rleFrString``, vectorised: the run lengths of a compressed RLE string.

    Each character holds 5 bits (``c - 48``) and a continuation bit (0x20); the last character of a number
    carries its sign (0x10); from the fourth count on, a count is stored as the difference to the count
    two places back.
    """
    v = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if v.size == 0:
        return np.zeros(0, np.int64)
    ends = np.flatnonzero((v & 0x20) == 0)  # the last character of each number
    starts = np.concatenate(([0], ends[:-1] + 1))
    shift = 5 * (np.arange(v.size) - np.repeat(starts, ends - starts + 1))
    x = np.add.reduceat((v & 0x1F) << shift, starts)
    negative = (v[ends] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * (ends - starts + 1))), x)
    cnts = x.copy()
    cnts[3::2] = np.cumsum(x[1::2])[1:]  # odd chain: c[m] = x[m] + c[m-2] from m = 3
    cnts[4::2] = x[2] + np.cumsum(x[4::2]) if x.size > 4 else cnts[4::2]  # even chain from m = 4
    return cnts


def decode_crop(counts: bytes, height: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The window ``[y0:y1, x0:x1]`` of a compressed RLE mask, without decoding the whole image.

    COCO RLE runs go down the columns (column-major, starting with background); only the runs that meet
    columns ``x0..x1`` are drawn, into a full-height strip of those columns.
    """
    cnts = rle_counts(counts)
    ends = np.cumsum(cnts)
    starts = ends - cnts
    lo, hi = x0 * height, x1 * height
    s, e = np.clip(starts[1::2], lo, hi) - lo, np.clip(ends[1::2], lo, hi) - lo  # the foreground runs
    keep = e > s
    edges = np.zeros(hi - lo + 1, np.int32)
    np.add.at(edges, s[keep], 1)
    np.add.at(edges, e[keep], -1)
    strip = np.cumsum(edges[:-1]).astype(bool).reshape(x1 - x0, height)
    return np.ascontiguousarray(strip.T[y0:y1]).view(np.uint8)


def _coded(rle: Mapping[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def crop_iou(a: BoundaryCrop, b: BoundaryCrop) -> float:
    """IoU of two bands given as crops (their intersection lies where both crops do)."""
    if a.area == 0 and b.area == 0:
        return 0.0
    ax1, ay1 = a.x0 + a.band.shape[1], a.y0 + a.band.shape[0]
    bx1, by1 = b.x0 + b.band.shape[1], b.y0 + b.band.shape[0]
    x0, y0, x1, y1 = max(a.x0, b.x0), max(a.y0, b.y0), min(ax1, bx1), min(ay1, by1)
    inter = 0
    if x1 > x0 and y1 > y0:
        pa = a.band[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
        pb = b.band[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
        inter = int(np.count_nonzero(pa & pb))
    return inter / (a.area + b.area - inter)


# Boundary IoU enters the protocol as min(mask IoU, boundary IoU), and the lowest matching threshold is
# 0.5: a pair whose mask IoU is below it can never match, whatever its boundary IoU, so the (costly)
# boundary is computed only for masks in pairs at or above it.
MIN_MATCH_IOU = 0.5


def boundary_iou_fn(dilation_ratio: float = DILATION_RATIO):
    """IoU function for :func:`federated_eval`: ``min(mask IoU, boundary IoU)`` on RLE segmentations.

    Pairs with mask IoU below :data:`MIN_MATCH_IOU` keep their mask IoU (they cannot match either way);
    each mask's boundary is computed at most once, on a crop around the mask.
    """
    import pycocotools.mask as mask_utils

    cache: dict[int, BoundaryCrop] = {}

    def boundary(ann: Mapping[str, Any]) -> BoundaryCrop:
        key = id(ann)
        if key not in cache:
            cache[key] = boundary_crop(ann["segmentation"], dilation_ratio)
        return cache[key]

    def iou(dts: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]]) -> np.ndarray:
        crowd = [0] * len(gts)
        mask_iou = np.asarray(
            mask_utils.iou([d["segmentation"] for d in dts], [g["segmentation"] for g in gts], crowd)
        ).reshape(len(dts), len(gts))
        out = mask_iou.copy()
        for i, j in zip(*np.nonzero(mask_iou >= MIN_MATCH_IOU), strict=True):
            out[i, j] = min(mask_iou[i, j], crop_iou(boundary(dts[i]), boundary(gts[j])))
        return out

    return iou


def gt_with_rles(gt_coco: Any) -> list[dict[str, Any]]:
    """GT annotations with their polygons rasterised to RLE (hotcoco's ``ann_to_rle``)."""
    out = []
    for ann in gt_coco.anns.values():
        a = dict(ann)
        a["segmentation"] = gt_coco.ann_to_rle(ann)
        out.append(a)
    return out


def boundary_ap(
    images: Mapping[int, Mapping[str, Any]],
    categories: Mapping[int, Mapping[str, Any]],
    gt_anns: Sequence[Mapping[str, Any]],
    dets: Sequence[Mapping[str, Any]],
    *,
    dilation_ratio: float = DILATION_RATIO,
    max_dets: int = 300,
) -> tuple[dict[str, float], dict[int, float]]:
    """Boundary AP summary (same keys as mask AP) and per-category Boundary AP.

    Defined by the Boundary IoU API (github bowenc0221/boundary-iou-api, ``lvis_instance_api/eval.py``):
    its area ranges leave out ``area >= hi`` (lvis-api: ``area > hi``), so an object of area exactly
    32**2 is 'medium' and one of 96**2 'large' here; segm and bbox keep lvis-api's rule. Detections and
    GT of area 0 are not scored (its ``get_ann_ids`` keeps ``area > 0``), as in lvis-api.

    ``gt_anns`` and ``dets`` carry RLE ``segmentation`` dicts (see :func:`gt_with_rles`).
    """
    return federated_eval(
        images,
        categories,
        gt_anns,
        dets,
        boundary_iou_fn(dilation_ratio),
        max_dets=max_dets,
        hi_exclusive=True,
    )
