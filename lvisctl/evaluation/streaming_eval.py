"""The LVIS federated protocol streamed image by image over arrays: Boundary AP and Fixed AP at LVIS scale.

``federated_eval`` holds every detection as a Python dict and groups them in dicts; at LVIS val size
(19,809 images x 300 detections) that is ~24 GB. Here the detections stay in the hotcoco dataset that
``evaluate`` already parsed; one image's detections at a time become Python objects (``load_anns``), are
capped / filtered / matched exactly as lvis-api does (per-image cap of 300 by score, ties in file order;
only categories in the image's GT or its ``neg_category_ids``; greedy matching per category and area
range; not-exhaustive and out-of-range detections ignored when unmatched), and what is kept per
detection is a category index, its score and 2 x 4 x 10 match bits. The PR curves and the summary are
``federated_eval``'s. Memory grows with the number of detections times ~30 bytes.

Matching values: ``segm`` mask IoU (hotcoco's compiled RLE IoU), ``bbox`` box IoU, ``boundary``
min(mask IoU, boundary IoU) with the band computed only for same-category pairs whose mask IoU is at
least 0.5 (below that a pair cannot match at any threshold of 0.5-0.95, whatever its boundary IoU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvisctl.evaluation.boundary_ap import DILATION_RATIO, boundary_width
from lvisctl.evaluation.federated_eval import AREA_RNGS, IOU_THRS, _pr_curve, _summarize

KINDS = ("segm", "bbox", "boundary")
_AREAS = np.array(list(AREA_RNGS.values()), dtype=np.float64)
# The Boundary IoU API's LVIS evaluator (boundary_iou/lvis_instance_api/eval.py) leaves out ``area >= hi``
# where lvis-api leaves out ``area > hi``; the kernel tests ``area > hi``, so its ``hi`` is the next double
# below (exact for float64 areas): an object of area 32**2 is 'medium' for Boundary AP, 'small' for segm.
_AREAS_HI_EXCLUSIVE = np.stack([_AREAS[:, 0], np.nextafter(_AREAS[:, 1], -np.inf)], axis=1)


@dataclass
class Task:
    """One metric computed in the stream: its matching value, per-image cap and per-category top-k."""

    kind: str  # "segm" (mask IoU), "bbox" (box IoU) or "boundary" (min(mask IoU, boundary IoU))
    max_dets: int = 300  # per image; -1: no cap (Fixed AP)
    top_k: int | None = None  # per category over the dataset (Fixed AP); None: all
    dilation_ratio: float = 0.02
    # Filled by the stream: per detection kept, its category index, score and bits [n, A].
    cats: list[np.ndarray] = field(default_factory=list, repr=False)
    scores: list[np.ndarray] = field(default_factory=list, repr=False)
    m_bits: list[np.ndarray] = field(default_factory=list, repr=False)
    ig_bits: list[np.ndarray] = field(default_factory=list, repr=False)
    num_gt: np.ndarray | None = field(default=None, repr=False)  # [K, A]
    # With top_k only: the ids of the detections above, and (category, score, id) of the filtered-out ones.
    ids: list[np.ndarray] = field(default_factory=list, repr=False)
    rank_only: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)


@dataclass
class _Image:
    """One image's detections (file order) and GT, as arrays plus the RLE strings for the kernels."""

    det_ids: np.ndarray
    det_cat: np.ndarray  # category index (0 .. K-1)
    det_score: np.ndarray
    det_area: np.ndarray
    det_anns: list[dict[str, Any]]
    gt_cat: np.ndarray
    gt_area: np.ndarray
    gt_ign: np.ndarray
    gt_rles: list[dict[str, Any]]
    gt_boxes: np.ndarray


def stream_federated(
    gt: Any, dets: Any, tasks: Sequence[Task]
) -> list[tuple[dict[str, float], dict[int, float]]]:
    """Evaluate ``tasks`` in one pass over the images of ``gt`` (an ``LvisGroundTruth``) and ``dets``
    (a hotcoco dataset of the uncapped results, as ``load_res`` returns it).

    Returns, per task, the LVIS summary (lvis-api's keys) and the AP of each category (NaN: no GT).
    """
    cat_ids = sorted(gt.categories)
    cat_index = {c: k for k, c in enumerate(cat_ids)}
    img_ids = sorted(gt.coco.get_img_ids())
    for t in tasks:
        if t.top_k is not None and t.max_dets >= 0:
            raise ValueError("a per-category top-k is defined here without a per-image cap (Fixed AP)")
        t.num_gt = np.zeros((len(cat_ids), len(_AREAS)), np.int64)
    images = gt.coco.imgs  # hotcoco builds this dict on every access: once
    for img_id in img_ids:
        image = _load_image(gt, dets, img_id, cat_index)
        info = images[img_id]
        for t in tasks:
            _evaluate_image(t, image, info, cat_index)
    return [_finish(t, cat_ids, gt.categories) for t in tasks]


def _load_image(gt: Any, dets: Any, img_id: int, cat_index: Mapping[int, int]) -> _Image:
    ids = sorted(dets.get_ann_ids(img_ids=[img_id]))  # result ids are assigned in file order
    anns = dets.load_anns(ids) if ids else []
    g_anns = gt.coco.load_anns(gt.coco.get_ann_ids(img_ids=[img_id]))  # file order, as lvis-api
    return _Image(
        det_ids=np.asarray(ids, np.int64),
        det_cat=np.array([cat_index[a["category_id"]] for a in anns], np.int64),
        det_score=np.array([a["score"] for a in anns], np.float64),
        det_area=np.array([a["area"] for a in anns], np.float64),
        det_anns=anns,
        gt_cat=np.array([cat_index[a["category_id"]] for a in g_anns], np.int64),
        gt_area=np.array([a["area"] for a in g_anns], np.float64),
        gt_ign=np.array([bool(a.get("ignore", 0)) for a in g_anns], bool),
        gt_rles=[gt.coco.ann_to_rle(a) for a in g_anns],
        gt_boxes=np.array([a["bbox"] for a in g_anns], np.float64).reshape(-1, 4),
    )


def _evaluate_image(task: Task, im: _Image, info: Mapping[str, Any], cat_index) -> None:
    from lvisctl.evaluation._stream_kernel import match_image

    # The per-image cap (lvis-api's limit_dets_per_image): best scores first, ties in file order.
    order = np.argsort(-im.det_score, kind="stable")
    if task.max_dets >= 0:
        order = order[: task.max_dets]
    # Federated filtering: only categories verified in this image (present in its GT, or negative).
    allowed = np.zeros(len(cat_index), bool)
    allowed[im.gt_cat] = True
    allowed[[cat_index[c] for c in info.get("neg_category_ids", ()) if c in cat_index]] = True
    # lvis-api scores only area > 0 (get_ann_ids in LVISEval._prepare), after the cap: an empty mask or a
    # zero-area box keeps its slot under the cap and its rank in Fixed AP's top-k, and is then dropped.
    verified = allowed[im.det_cat[order]] & (im.det_area[order] > 0)
    if task.top_k is not None:
        # The top-k ranks every detection of the file, the filtered-out ones included.
        out = order[~verified]
        task.rank_only.append((im.det_cat[out].astype(np.int32), im.det_score[out], im.det_ids[out]))
        task.ids.append(im.det_ids[order[verified]])
    order = order[verified]
    not_exh = np.zeros(len(cat_index), bool)
    not_exh[[cat_index[c] for c in info.get("not_exhaustive_category_ids", ()) if c in cat_index]] = True
    det_cat = im.det_cat[order]
    ious = _ious(task, im, order, det_cat)
    m_bits, ig_bits, gt_valid = match_image(
        ious,
        det_cat,
        im.det_area[order],
        not_exh[det_cat],
        im.gt_cat,
        im.gt_area,
        im.gt_ign,
        _AREAS_HI_EXCLUSIVE if task.kind == "boundary" else _AREAS,
        IOU_THRS,
    )
    task.cats.append(det_cat.astype(np.int32))
    task.scores.append(im.det_score[order])
    task.m_bits.append(m_bits)
    task.ig_bits.append(ig_bits)
    for a in range(len(_AREAS)):
        np.add.at(task.num_gt[:, a], im.gt_cat[gt_valid[:, a]], 1)


def _ious(task: Task, im: _Image, order: np.ndarray, det_cat: np.ndarray) -> np.ndarray:
    """The matching value of each kept detection with each GT of the image, for same-category pairs (the
    only ones matching reads); 0 where it provably stays below 0.5 (no threshold can accept it)."""
    num_dt, num_gt = len(order), len(im.gt_cat)
    ious = np.zeros((num_dt, num_gt), np.float64)
    pd, pg = np.nonzero(det_cat[:, None] == im.gt_cat[None, :])
    if len(pd) == 0:
        return ious
    if task.kind == "bbox":
        import hotcoco

        boxes = np.array([im.det_anns[i]["bbox"] for i in order], np.float64).reshape(-1, 4)
        return np.asarray(hotcoco.primitives.bbox_iou(boxes, im.gt_boxes, [0] * num_gt), np.float64)
    from lvisctl.evaluation._stream_kernel import pair_ious

    h, w = (int(v) for v in im.gt_rles[0]["size"])
    strings = [_as_bytes(im.det_anns[i]["segmentation"]["counts"]) for i in order]
    strings += [_as_bytes(r["counts"]) for r in im.gt_rles]
    offs = np.zeros(len(strings) + 1, np.int64)
    np.cumsum([len(s) for s in strings], out=offs[1:])
    buf = np.frombuffer(b"".join(strings), np.uint8)
    d = boundary_width(h, w, task.dilation_ratio)
    boundary = task.kind == "boundary"
    ious[pd, pg] = pair_ious(
        buf, offs, h, w, d, pd.astype(np.int64), (pg + num_dt).astype(np.int64), boundary
    )
    return ious


def _as_bytes(counts: str | bytes) -> bytes:
    return counts.encode("ascii") if isinstance(counts, str) else counts


def _top_k_mask(task: Task, cats: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Which recorded detections are among the ``top_k`` of their category over the whole file (ties in
    file order, i.e. by result id), filtered-out detections ranked too.

    Dropping them after matching is exact: within an (image, category) the dropped ones are the lowest
    in score order, and greedy matching gives a detection the same match whatever comes after it.
    """
    ids = np.concatenate(task.ids) if task.ids else np.zeros(0, np.int64)
    extra = task.rank_only
    all_cats = np.concatenate([cats, *(e[0] for e in extra)])
    all_scores = np.concatenate([scores, *(e[1] for e in extra)])
    all_ids = np.concatenate([ids, *(e[2] for e in extra)])
    task.ids, task.rank_only = [], []
    order = np.lexsort((all_ids, -all_scores, all_cats))
    sorted_cats = all_cats[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_cats, sorted_cats, side="left")
    keep = np.zeros(len(order), bool)
    keep[order[rank < task.top_k]] = True
    return keep[: len(cats)]


def _finish(task: Task, cat_ids: list[int], categories) -> tuple[dict[str, float], dict[int, float]]:
    """Per-category 101-point PR curves (lvis-api's accumulate) and the summary."""
    num_t, num_a = len(IOU_THRS), len(_AREAS)
    cats = np.concatenate(task.cats) if task.cats else np.zeros(0, np.int32)
    scores = np.concatenate(task.scores) if task.scores else np.zeros(0)
    m_bits = np.concatenate(task.m_bits) if task.m_bits else np.zeros((0, num_a), np.uint16)
    ig_bits = np.concatenate(task.ig_bits) if task.ig_bits else np.zeros((0, num_a), np.uint16)
    task.cats, task.scores, task.m_bits, task.ig_bits = [], [], [], []
    if task.top_k is not None:
        keep = _top_k_mask(task, cats, scores)
        cats, scores, m_bits, ig_bits = cats[keep], scores[keep], m_bits[keep], ig_bits[keep]
    # Per category: score descending, ties in image order then in-image order (lvis-api's mergesort
    # over the per-image lists concatenated in image order).
    order = np.lexsort((-scores, cats))
    cats, m_bits, ig_bits = cats[order], m_bits[order], ig_bits[order]
    bounds = np.searchsorted(cats, np.arange(len(cat_ids) + 1))
    precision = -np.ones((num_t, 101, len(cat_ids), num_a))
    recall = -np.ones((num_t, len(cat_ids), num_a))
    shifts = np.arange(num_t, dtype=np.uint16)
    for k in range(len(cat_ids)):
        s, e = bounds[k], bounds[k + 1]
        for a in range(num_a):
            num_gt = int(task.num_gt[k, a])
            if num_gt == 0:
                continue
            dt_m = ((m_bits[s:e, a, None] >> shifts) & 1).astype(bool).T  # [T, n]
            dt_ig = ((ig_bits[s:e, a, None] >> shifts) & 1).astype(bool).T
            tp = np.cumsum(dt_m & ~dt_ig, axis=1).astype(np.float64)
            fp = np.cumsum(~dt_m & ~dt_ig, axis=1).astype(np.float64)
            for t in range(num_t):
                precision[t, :, k, a], recall[t, k, a] = _pr_curve(tp[t], fp[t], num_gt)
    max_dets = task.max_dets if task.max_dets >= 0 else -1
    return _summarize(precision, recall, cat_ids, categories, max_dets)


def boundary_ap_streaming(gt: Any, dets: Any, *, dilation_ratio: float = DILATION_RATIO, max_dets: int = 300):
    """Boundary AP of a hotcoco dataset of results (uncapped, as ``load_res`` gives it) against ``gt``
    (an ``LvisGroundTruth``), image by image (``streaming_eval``): what ``evaluate --metrics boundary``
    runs at LVIS scale. Same numbers (and area-range rule) as ``boundary_ap.boundary_ap``; returns an
    ``IouTypeMetrics``."""
    from lvisctl.evaluation.lvis_metrics import IouTypeMetrics

    task = Task("boundary", max_dets=max_dets, dilation_ratio=dilation_ratio)
    ((summary, per_cat),) = stream_federated(gt, dets, [task])
    return IouTypeMetrics(metrics=summary, per_category_ap=per_cat)
