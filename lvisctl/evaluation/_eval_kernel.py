"""numba kernels of :mod:`lvisctl.evaluation.fast_eval`: lvis-api's per-image evaluation.

``eval_images`` runs lvis-api's ``evaluate_img`` for a range of images straight from parsed columns: the
per-image cap (300 best by score, ties in file order), the federated filter (categories in the image's
GT or ``neg_category_ids``), ``area > 0``, the IoU of every same-category (detection, GT) pair (mask IoU
from the compressed RLE strings as pycocotools computes it; box IoU as pycocotools' ``bbIou``), and the
greedy matching of ``_stream_kernel.match_image``. It holds no Python object, so threads
run it on disjoint image ranges at once.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lvisctl.evaluation._stream_kernel import _decode_counts, _rle_intersection, match_image
from lvisctl.evaluation.numba_cache import ensure_cache_dir

ensure_cache_dir()


@njit(cache=True, nogil=True)
def _decode_all(buf, starts, ends, escaped, height):  # pragma: no cover - compiled
    """Counts, their offsets, column spans ([x0, _, x1, _]) and areas of the RLE strings
    ``buf[starts[i]:ends[i]]``."""
    n = len(starts)
    total = 0
    for i in range(n):
        total += ends[i] - starts[i]
    cnts = np.zeros(max(total, 1), np.int64)
    cstart = np.zeros(n + 1, np.int64)
    box = np.zeros((n, 4), np.int64)
    area = np.zeros(n, np.int64)
    for i in range(n):
        m = _decode_counts(buf, starts[i], ends[i], cnts[cstart[i] :], escaped)
        cstart[i + 1] = cstart[i] + m
        # the columns the foreground spans (x0, x1 exclusive): enough to skip most disjoint pairs
        pos = np.int64(0)
        first, last = np.int64(-1), np.int64(-1)
        for k in range(m):
            c = cnts[cstart[i] + k]
            if k & 1 and c > 0:
                area[i] += c
                if first < 0:
                    first = pos
                last = pos + c - 1
            pos += c
        if first >= 0:
            box[i, 0], box[i, 2] = first // height, last // height + 1
    return cnts, cstart, box, area


@njit(cache=True, nogil=True)
def _box_iou(d, g):  # pragma: no cover - compiled
    """pycocotools' ``bbIou`` for one pair of [x, y, w, h] boxes (not crowd), same operations."""
    w = min(d[2] + d[0], g[2] + g[0]) - max(d[0], g[0])
    if w <= 0:
        return 0.0
    h = min(d[3] + d[1], g[3] + g[1]) - max(d[1], g[1])
    if h <= 0:
        return 0.0
    i = w * h
    return i / (d[2] * d[3] + g[2] * g[3] - i)


@njit(cache=True, nogil=True)
def _image_ious(kind, keep, dets, gts, gs, ge, height):  # pragma: no cover - compiled
    """IoU of each kept detection with each GT of the image, for same-category pairs (0 elsewhere, and
    where a mask IoU provably stays below 0.5: areas whose ratio is below it, or no column in common)."""
    d_cat, _, _, d_marea, d_box, d_rs, d_re, dbuf = dets
    g_cat, _, _, g_box, g_rs, g_re, gbuf = gts
    nk, ng = len(keep), ge - gs
    ious = np.zeros((nk, ng), np.float64)
    if nk == 0 or ng == 0:
        return ious
    if kind == 1:
        for a in range(nk):
            d = keep[a]
            for b in range(ng):
                if d_cat[d] == g_cat[gs + b]:
                    ious[a, b] = _box_iou(d_box[d], g_box[gs + b])
        return ious
    gc, gcs, gbx, garea = _decode_all(gbuf, g_rs[gs:ge], g_re[gs:ge], False, height)
    need = np.zeros(nk, np.bool_)
    for a in range(nk):
        d = keep[a]
        for b in range(ng):
            if d_cat[d] == g_cat[gs + b]:
                lo, hi = min(d_marea[d], garea[b]), max(d_marea[d], garea[b])
                if lo >= 0.5 * hi:
                    need[a] = True
    idx = np.flatnonzero(need)
    if len(idx) == 0:
        return ious
    sel = keep[idx]
    dc, dcs, dbx, darea = _decode_all(dbuf, d_rs[sel], d_re[sel], True, height)
    for j in range(len(idx)):
        a = idx[j]
        d = keep[a]
        for b in range(ng):
            if d_cat[d] != g_cat[gs + b]:
                continue
            lo, hi = min(darea[j], garea[b]), max(darea[j], garea[b])
            if lo < 0.5 * hi:
                continue
            if max(dbx[j, 0], gbx[b, 0]) >= min(dbx[j, 2], gbx[b, 2]):
                continue  # no column in common
            inter = _rle_intersection(dc[dcs[j] : dcs[j + 1]], gc[gcs[b] : gcs[b + 1]])
            if inter > 0:
                ious[a, b] = inter / (darea[j] + garea[b] - inter)
    return ious


@njit(cache=True, nogil=True)
def _set_flags(flags, cats, value):  # pragma: no cover - compiled
    """``flags[c] = value`` for every category index ``c`` of ``cats``."""
    for c in cats:
        flags[c] = value


@njit(cache=True, nogil=True)
def eval_images(i0, i1, kind, max_dets, imgs, dets, gts, params, outs):  # pragma: no cover - compiled
    """lvis-api's ``evaluate_img`` for images ``i0 .. i1 - 1`` (indices into the sorted GT image ids).

    ``imgs``: per image its detection range and GT range (CSR starts), height, and CSR lists of negative
    and not-exhaustive category indices; ``dets`` / ``gts``: the columns (detections of an image in file
    order); ``params``: (area ranges [A, 2], IoU thresholds [T], number of categories); ``outs``: per
    image its first output row, and the rows (category, score, matched bits [n, A], ignored bits [n, A]),
    the kept count per image, the GT count per (category, area range) and the zero-area count.
    Returns the number of capped detections of area 0 (lvis-api leaves them out).
    """
    d_start, g_start, heights, neg_start, neg_cat, nexh_start, nexh_cat = imgs
    d_cat, d_score, d_area = dets[0], dets[1], dets[2]
    g_cat, g_area, g_ign = gts[0], gts[1], gts[2]
    area_rng, thrs, num_cats = params
    o_start, o_cat, o_score, o_m, o_ig, o_n, num_gt = outs
    allowed = np.zeros(num_cats, np.bool_)
    not_exh = np.zeros(num_cats, np.bool_)
    zero_area = 0
    for ii in range(i0, i1):
        ds, de, gs, ge = d_start[ii], d_start[ii + 1], g_start[ii], g_start[ii + 1]
        order = np.argsort(-d_score[ds:de], kind="mergesort")[:max_dets] + ds
        _set_flags(allowed, g_cat[gs:ge], True)
        _set_flags(allowed, neg_cat[neg_start[ii] : neg_start[ii + 1]], True)
        _set_flags(not_exh, nexh_cat[nexh_start[ii] : nexh_start[ii + 1]], True)
        keep = np.empty(len(order), np.int64)
        nk = 0
        for d in order:
            if d_area[d] <= 0:
                zero_area += 1
            elif allowed[d_cat[d]]:
                keep[nk] = d
                nk += 1
        keep = keep[:nk]
        ious = _image_ious(kind, keep, dets, gts, gs, ge, heights[ii])
        kc = d_cat[keep]
        nexh = np.zeros(nk, np.bool_)
        for a in range(nk):
            nexh[a] = not_exh[kc[a]]
        m_bits, ig_bits, gt_valid = match_image(
            ious, kc, d_area[keep], nexh, g_cat[gs:ge], g_area[gs:ge], g_ign[gs:ge], area_rng, thrs
        )
        row = o_start[ii]
        for a in range(nk):
            o_cat[row + a] = kc[a]
            o_score[row + a] = d_score[keep[a]]
            o_m[row + a] = m_bits[a]
            o_ig[row + a] = ig_bits[a]
        o_n[ii] = nk
        for g in range(ge - gs):
            for a in range(area_rng.shape[0]):
                if gt_valid[g, a]:
                    num_gt[g_cat[gs + g], a] += 1
        # the image's categories back to unset, for the next image
        _set_flags(allowed, g_cat[gs:ge], False)
        _set_flags(allowed, neg_cat[neg_start[ii] : neg_start[ii + 1]], False)
        _set_flags(not_exh, nexh_cat[nexh_start[ii] : nexh_start[ii + 1]], False)
    return zero_area
