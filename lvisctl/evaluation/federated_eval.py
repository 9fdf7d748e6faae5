"""LVIS's federated AP protocol (Gupta et al. 2019) with a pluggable IoU, for metrics hotcoco lacks.

hotcoco computes the official metrics; this is the same protocol as lvis-api 0.5.3 step for step
(per-image cap, federated filtering of detections, greedy matching per (image, category) and area
range, not-exhaustive ignores, 101-point interpolated precision), written once with a pluggable IoU.
The tests check it against lvis-api with plain mask IoU. It holds every detection as a dict and runs in
Python loops: it is the readable reference (the tests run the Boundary IoU API's definition through it);
``evaluate`` runs the same protocol streamed over arrays (``streaming_eval``), which scales to LVIS val.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
AREA_RNGS = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
FREQS = ("r", "c", "f")
# (dts, gts) -> IoU matrix [len(dts), len(gts)]; dts sorted by score, highest first.
IouFn = Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]], np.ndarray]


def cap_per_image(dets: Sequence[Mapping[str, Any]], max_dets: int) -> list[Mapping[str, Any]]:
    """lvis-api's ``limit_dets_per_image``: the ``max_dets`` best per image (stable on ties), grouped."""
    by_img: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for d in dets:
        by_img[d["image_id"]].append(d)
    out = []
    for anns in by_img.values():
        if max_dets >= 0 and len(anns) > max_dets:
            anns = sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets]
        out.extend(anns)
    return out


def detection_area(det: Mapping[str, Any]) -> float:
    """lvis-api's rule: the box area when the results carry boxes, else the mask area."""
    import pycocotools.mask as mask_utils

    if "bbox" in det:
        return float(det["bbox"][2] * det["bbox"][3])
    return float(mask_utils.area(det["segmentation"]))


def greedy_match(
    ious: np.ndarray,
    order: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    ignored: np.ndarray,
    thr: float,
    matched: np.ndarray,
) -> None:
    """lvis-api's greedy matching at one IoU threshold: the detections, in score order (the rows of
    ``ious``), each take among their candidate GTs ``order[lo[d]:hi[d]]`` (not-ignored before ignored) the
    free one with the highest IoU >= ``thr``; a match on a not-ignored GT stops the search at the first
    ignored one. ``matched[d]``: the GT index detection ``d`` took, -1 for none; ``ignored``: per GT.

    Plain Python for this module's readable loop; ``_stream_kernel`` compiles this same function (numba's
    cache checks only the caller's file: an edit here needs an edit of ``_stream_kernel.py`` to recompile)."""
    taken = np.zeros(len(ignored), np.bool_)
    for d in range(ious.shape[0]):
        best = min(thr, 1 - 1e-10)
        m = -1
        for k in range(lo[d], hi[d]):
            g = order[k]
            if taken[g]:
                continue
            if m > -1 and not ignored[m] and ignored[g]:
                break
            if ious[d, g] < best:
                continue
            best = ious[d, g]
            m = g
        matched[d] = m
        if m > -1:
            taken[m] = True


def _match(ious: np.ndarray, gt_ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of score-sorted dts to ignore-last-sorted gts at every IoU threshold.

    Returns ``dt_matched`` [T, D] (bool) and ``dt_on_ignored_gt`` [T, D], exactly as lvis-api's loop (in
    Python: this module is the readable reference; the compiled matcher is ``_stream_kernel``'s).
    """
    num_dt, num_gt = ious.shape
    dt_m = np.zeros((len(IOU_THRS), num_dt), dtype=bool)
    dt_ig = np.zeros((len(IOU_THRS), num_dt), dtype=bool)
    # every detection's candidates: all GTs, in the given (ignore-last) order
    lo, hi = np.zeros(num_dt, np.int64), np.full(num_dt, num_gt, np.int64)
    matched = np.empty(num_dt, np.int64)
    for t, thr in enumerate(IOU_THRS):
        greedy_match(ious, np.arange(num_gt), lo, hi, gt_ignore, thr, matched)
        hit = matched > -1
        dt_m[t] = hit
        dt_ig[t, hit] = gt_ignore[matched[hit]]
    return dt_m, dt_ig


def federated_eval(
    images: Mapping[int, Mapping[str, Any]],
    categories: Mapping[int, Mapping[str, Any]],
    gt_anns: Sequence[Mapping[str, Any]],
    dets: Sequence[Mapping[str, Any]],
    iou_fn: IouFn,
    *,
    max_dets: int = 300,
    hi_exclusive: bool = False,
) -> tuple[dict[str, float], dict[int, float]]:
    """LVIS summary metrics (AP, AP50, ..., APr/c/f, AR@max_dets...) and per-category AP (NaN = no GT).

    ``hi_exclusive``: an area range leaves out ``area >= hi`` (the Boundary IoU API's rule) instead of
    lvis-api's ``area > hi``.
    """
    dets = cap_per_image(dets, max_dets)
    gts: dict[tuple[int, int], list[Mapping[str, Any]]] = defaultdict(list)
    present: dict[int, set[int]] = defaultdict(set)
    for g in gt_anns:
        if g["area"] <= 0:
            continue
        gts[g["image_id"], g["category_id"]].append(g)
        present[g["image_id"]].add(g["category_id"])
    dts: dict[tuple[int, int], list[Mapping[str, Any]]] = defaultdict(list)
    for d in dets:
        img, cat = d["image_id"], d["category_id"]
        if detection_area(d) <= 0:  # lvis-api evaluates area > 0 only, after the cap (get_ann_ids)
            continue
        if cat in categories and (cat in present[img] or cat in images[img].get("neg_category_ids", ())):
            dts[img, cat].append(d)
    cat_ids = sorted(categories)
    # Per category and area range: the concatenated per-image evaluations.
    acc: dict[tuple[int, str], list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]] = defaultdict(list)
    # Image order, as lvis-api concatenates the per-image evaluations (score ties across images keep it).
    for key in sorted(set(gts) | set(dts)):
        img, cat = key
        g_list, d_list = gts.get(key, []), dts.get(key, [])
        order = np.argsort([-d["score"] for d in d_list], kind="mergesort")
        d_list = [d_list[i] for i in order]
        ious = iou_fn(d_list, g_list) if g_list and d_list else np.zeros((len(d_list), len(g_list)))
        scores = np.array([d["score"] for d in d_list], dtype=np.float64)
        d_area = np.array([detection_area(d) for d in d_list], dtype=np.float64)
        g_area = np.array([g["area"] for g in g_list], dtype=np.float64)
        not_exhaustive = cat in images[img].get("not_exhaustive_category_ids", ())
        for name, (lo, hi) in AREA_RNGS.items():
            hi = float(np.nextafter(hi, -np.inf)) if hi_exclusive else hi  # area > hi' <=> area >= hi
            g_ig = (
                np.array([bool(g.get("ignore", 0)) for g in g_list], dtype=bool)
                | (g_area < lo)
                | (g_area > hi)
            )
            g_order = np.argsort(g_ig, kind="mergesort")
            dt_m, dt_ig = _match(ious[:, g_order], g_ig[g_order])
            outside = (d_area < lo) | (d_area > hi) | not_exhaustive
            dt_ig = dt_ig | (~dt_m & outside[None, :])
            acc[cat, name].append((scores, dt_m, dt_ig, int((~g_ig).sum())))
    precision = -np.ones((len(IOU_THRS), len(REC_THRS), len(cat_ids), len(AREA_RNGS)))
    recall = -np.ones((len(IOU_THRS), len(cat_ids), len(AREA_RNGS)))
    for k, cat in enumerate(cat_ids):
        for a, name in enumerate(AREA_RNGS):
            parts = acc.get((cat, name))
            if not parts:
                continue
            num_gt = sum(p[3] for p in parts)
            if num_gt == 0:
                continue
            scores = np.concatenate([p[0] for p in parts])
            order = np.argsort(-scores, kind="mergesort")
            dt_m = np.concatenate([p[1] for p in parts], axis=1)[:, order]
            dt_ig = np.concatenate([p[2] for p in parts], axis=1)[:, order]
            tp = np.cumsum(dt_m & ~dt_ig, axis=1).astype(np.float64)
            fp = np.cumsum(~dt_m & ~dt_ig, axis=1).astype(np.float64)
            for t in range(len(IOU_THRS)):
                precision[t, :, k, a], recall[t, k, a] = _pr_curve(tp[t], fp[t], num_gt)
    return _summarize(precision, recall, cat_ids, categories, max_dets)


def _pr_curve(tp: np.ndarray, fp: np.ndarray, num_gt: int) -> tuple[np.ndarray, float]:
    """101-point interpolated precision and final recall, as lvis-api computes them."""
    rc = tp / num_gt
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # precision envelope from the right
    idx = np.searchsorted(rc, REC_THRS, side="left")
    out = np.zeros(len(REC_THRS))
    valid = idx < len(pr)
    # lvis-api stops filling at the first recall threshold it cannot reach (the rest stay 0).
    n = int(np.argmin(valid)) if not valid.all() else len(valid)
    out[:n] = pr[idx[:n]]
    return out, float(rc[-1]) if len(rc) else 0.0


def _mean_valid(x: np.ndarray) -> float:
    v = x[x > -1]
    return float(np.mean(v)) if v.size else -1.0


def _summarize(precision, recall, cat_ids, categories, max_dets) -> tuple[dict[str, float], dict[int, float]]:
    areas = list(AREA_RNGS)
    t50, t75 = int(np.argmin(abs(IOU_THRS - 0.5))), int(np.argmin(abs(IOU_THRS - 0.75)))
    res = {
        "AP": _mean_valid(precision[..., 0]),
        "AP50": _mean_valid(precision[t50, ..., 0]),
        "AP75": _mean_valid(precision[t75, ..., 0]),
    }
    for name in ("small", "medium", "large"):
        res[f"AP{name[0]}"] = _mean_valid(precision[..., areas.index(name)])
    for f in FREQS:
        idx = [k for k, c in enumerate(cat_ids) if categories[c]["frequency"] == f]
        res[f"AP{f}"] = _mean_valid(precision[:, :, idx, 0])
    res[f"AR@{max_dets}"] = _mean_valid(recall[..., 0])
    for name in ("small", "medium", "large"):
        res[f"AR{name[0]}@{max_dets}"] = _mean_valid(recall[..., areas.index(name)])
    per_cat = {}
    for k, c in enumerate(cat_ids):
        v = precision[:, :, k, 0]
        per_cat[c] = float(np.mean(v[v > -1])) if (v > -1).any() else float("nan")
    return res, per_cat
