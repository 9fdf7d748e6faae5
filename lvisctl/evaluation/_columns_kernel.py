"""numba kernels between the strict reader and the per-image evaluation (:mod:`lvisctl.evaluation.fast_eval`).

``detection_columns`` checks what the reader's kernel cannot know (the GT's image and category ids, the
image sizes, finite numbers, no negative box side) and writes the evaluation's columns in the same pass,
straight from the reader's chunks: no concatenated copy of the parsed file and no numpy temporaries per
check (at 5,000 images x 300 detections those cost ~0.3 CPU s and ~250 MB of fresh pages, a tenth of bare
hotcoco's whole box evaluation). ``category_order`` is lvis-api's ordering for ``accumulate``: the kept
detections per category by score, descending, ties in image then file order (its stable mergesort).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lvisctl.evaluation._json_kernel import borrowed
from lvisctl.evaluation._parse_kernel import (
    C_CAT,
    C_FLAGS,
    C_H,
    C_IMG,
    C_MASK_AREA,
    C_RLE_END,
    C_RLE_START,
    C_W,
    F_H,
    F_SCORE,
    F_W,
    F_X,
    F_Y,
    HAS_BBOX,
    HAS_SEGMENTATION,
)
from lvisctl.evaluation.numba_cache import ensure_cache_dir

ensure_cache_dir()


MAX_TABLE = 1 << 22  # ids spanning more than this are looked up by binary search instead of a table


def lookup_table(sorted_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(table, base): ``table[id - base]`` is the position of ``id`` in ``sorted_ids`` or -1; an empty
    table where the ids span more than MAX_TABLE (then ``_index_of`` searches)."""
    if len(sorted_ids) == 0 or int(sorted_ids[-1]) - int(sorted_ids[0]) >= MAX_TABLE:
        return np.zeros(0, np.int64), 0
    base = int(sorted_ids[0])
    table = np.full(int(sorted_ids[-1]) - base + 1, -1, np.int64)
    table[sorted_ids - base] = np.arange(len(sorted_ids))
    return table, base


@njit(cache=True, nogil=True, inline="always")
def _index_of(sorted_ids, table, base, value):  # pragma: no cover - compiled
    """Position of ``value`` in ``sorted_ids``, or -1."""
    if len(table):
        k = value - base
        return table[k] if 0 <= k < len(table) else -1
    lo, hi = 0, len(sorted_ids)
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_ids[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(sorted_ids) and sorted_ids[lo] == value:
        return lo
    return -1


@njit(cache=True, nogil=True)
def detection_columns(ints, flt, row0, flags, gt, out):  # pragma: no cover - compiled
    """Check the parsed rows ``ints`` / ``flt`` and write them at ``row0`` of the columns ``out``.

    ``flags``: HAS_BBOX / HAS_SEGMENTATION, which every row must have alike; ``gt``: (image ids sorted,
    their heights, their widths, category ids sorted, then the ``lookup_table`` pairs of both);
    ``out``: (image index, category index, score,
    area, mask area, box [n, 4], RLE start, RLE end). The area is lvis-api's: the box's w * h when the
    file has boxes, else the mask's. Returns False at the first row ``results_io.validate_results``
    would refuse (an unknown id, a non-finite number, a negative box side, an RLE size that is not the
    image's, bbox or segmentation on some rows only): the caller then takes the exact route.
    """
    image_ids, heights, widths, cat_ids, img_table, img_base, cat_table, cat_base = gt
    # (owner-less views: no atomic reference counting per row, see _json_kernel.borrowed)
    image_ids, img_table = borrowed(image_ids), borrowed(img_table)
    cat_ids, cat_table = borrowed(cat_ids), borrowed(cat_table)
    o_img, o_cat, o_score, o_area, o_mask, o_box, o_rs, o_re = out
    has_box = (flags & HAS_BBOX) != 0
    has_seg = (flags & HAS_SEGMENTATION) != 0
    for r in range(len(ints)):
        if ints[r, C_FLAGS] != flags:
            return False
        k = _index_of(image_ids, img_table, img_base, ints[r, C_IMG])
        c = _index_of(cat_ids, cat_table, cat_base, ints[r, C_CAT])
        score = flt[r, F_SCORE]
        if k < 0 or c < 0 or not np.isfinite(score):
            return False
        j = row0 + r
        o_img[j] = k
        o_cat[j] = c
        o_score[j] = score
        mask_area = ints[r, C_MASK_AREA]
        o_mask[j] = mask_area
        if has_seg and (ints[r, C_H] != heights[k] or ints[r, C_W] != widths[k]):
            return False
        if has_box:
            x, y, w, h = flt[r, F_X], flt[r, F_Y], flt[r, F_W], flt[r, F_H]
            if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(w) and np.isfinite(h)):
                return False
            if w < 0 or h < 0:
                return False
            o_box[j, 0] = x
            o_box[j, 1] = y
            o_box[j, 2] = w
            o_box[j, 3] = h
            o_area[j] = w * h
        else:
            for q in range(4):
                o_box[j, q] = 0.0
            o_area[j] = np.float64(mask_area)
        o_rs[j] = ints[r, C_RLE_START]
        o_re[j] = ints[r, C_RLE_END]
    return True


@njit(cache=True, nogil=True)
def category_order(o_start, o_n, o_cat, o_score, o_m, o_ig, num_k):  # pragma: no cover - compiled
    """The kept rows (image i: ``o_start[i] .. o_start[i] + o_n[i] - 1``) grouped by category, each group
    by score descending with ties in row order, as lvis-api's mergesort over the images' concatenation.

    Returns (bounds [num_k + 1]: category k's rows are ``bounds[k] .. bounds[k + 1] - 1``, match bits,
    ignore bits) in that order.
    """
    counts = np.zeros(num_k + 1, np.int64)
    for i in range(len(o_n)):
        for r in range(o_start[i], o_start[i] + o_n[i]):
            counts[o_cat[r] + 1] += 1
    bounds = np.cumsum(counts)
    fill = bounds[:-1].copy()
    rows = np.empty(bounds[-1], np.int64)
    for i in range(len(o_n)):  # a counting sort by category keeps the row order within a category
        for r in range(o_start[i], o_start[i] + o_n[i]):
            c = o_cat[r]
            rows[fill[c]] = r
            fill[c] += 1
    num_a = o_m.shape[1]
    m_bits = np.empty((len(rows), num_a), o_m.dtype)
    ig_bits = np.empty((len(rows), num_a), o_ig.dtype)
    for c in range(num_k):
        lo, hi = bounds[c], bounds[c + 1]
        if hi == lo:
            continue
        keys = np.empty(hi - lo, np.float64)
        for j in range(lo, hi):
            keys[j - lo] = -o_score[rows[j]]
        order = np.argsort(keys, kind="mergesort")  # stable: ties stay in row order
        for j in range(hi - lo):
            r = rows[lo + order[j]]
            for a in range(num_a):
                m_bits[lo + j, a] = o_m[r, a]
                ig_bits[lo + j, a] = o_ig[r, a]
    return bounds, m_bits, ig_bits


@njit(cache=True, nogil=True)
def accumulate(k0, k1, bounds, m_bits, ig_bits, num_gt, rec_thrs, precision, recall):  # pragma: no cover
    """lvis-api's ``accumulate`` for categories ``k0 .. k1 - 1`` in one pass over each category's rows
    (``category_order``'s order and outputs): fills ``precision`` [T, R, K, A] and ``recall`` [T, K, A]
    (left at -1 where a category has no GT in an area range).

    lvis-api takes the precision envelope (the maximum at or after each row) at the first row whose recall
    reaches each threshold. Recall only rises at a true positive, and between two true positives precision
    only falls, so both the rows it looks up and the maxima it takes are at true positives (or the first
    row): it is enough to note precision and recall there, at most one per GT, with the same arithmetic.
    """
    num_a = num_gt.shape[1]
    num_t = precision.shape[0]
    num_r = len(rec_thrs)
    eps = np.spacing(1.0)
    for k in range(k0, k1):
        s, e = bounds[k], bounds[k + 1]
        n = e - s
        cap = 1
        for a in range(num_a):
            cap = max(cap, num_gt[k, a])
        tp_pr = np.empty((num_a, num_t, cap), np.float64)  # precision at the true positives
        tp_rc = np.empty((num_a, num_t, cap), np.float64)  # recall there
        count = np.zeros((num_a, num_t), np.int64)
        ctp = np.zeros((num_a, num_t), np.float64)
        cfp = np.zeros((num_a, num_t), np.float64)
        first_pr = np.zeros((num_a, num_t), np.float64)  # precision and recall at the first row
        first_rc = np.zeros((num_a, num_t), np.float64)
        for j in range(n):
            for a in range(num_a):
                ngt = num_gt[k, a]
                if ngt == 0:
                    continue
                m = m_bits[s + j, a]
                ig = ig_bits[s + j, a]
                for t in range(num_t):
                    if (ig >> t) & 1:
                        pass
                    elif (m >> t) & 1:
                        ctp[a, t] += 1.0
                        c = count[a, t]
                        if c < cap:  # (a GT is matched once: at most num_gt true positives)
                            tp_pr[a, t, c] = ctp[a, t] / (cfp[a, t] + ctp[a, t] + eps)
                            tp_rc[a, t, c] = ctp[a, t] / ngt
                            count[a, t] = c + 1
                    else:
                        cfp[a, t] += 1.0
                    if j == 0:
                        first_pr[a, t] = ctp[a, t] / (cfp[a, t] + ctp[a, t] + eps)
                        first_rc[a, t] = ctp[a, t] / ngt
        for a in range(num_a):
            ngt = num_gt[k, a]
            if ngt == 0:
                continue
            for t in range(num_t):
                recall[t, k, a] = ctp[a, t] / ngt if n else 0.0
                c = count[a, t]
                for p in range(c - 2, -1, -1):  # the envelope, at the true positives
                    if tp_pr[a, t, p + 1] > tp_pr[a, t, p]:
                        tp_pr[a, t, p] = tp_pr[a, t, p + 1]
                p = 0
                for r in range(num_r):
                    thr = rec_thrs[r]
                    if n and first_rc[a, t] >= thr:  # reached at the first row: its envelope
                        best = first_pr[a, t]
                        if c and tp_pr[a, t, 0] > best:
                            best = tp_pr[a, t, 0]
                        precision[t, r, k, a] = best
                        continue
                    while p < c and tp_rc[a, t, p] < thr:
                        p += 1
                    if p >= c:  # lvis-api stops at the first threshold it cannot reach
                        for r2 in range(r, num_r):
                            precision[t, r2, k, a] = 0.0
                        break
                    precision[t, r, k, a] = tp_pr[a, t, p]
