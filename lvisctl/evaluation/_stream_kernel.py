"""numba kernels of the streaming federated matcher (``streaming_eval``): one call per image each.

``boundary_pair_ious``: Boundary IoU of given (detection, GT) mask pairs straight from the compressed RLE
strings: each mask's inner boundary band is built once, on a crop around the mask, by a separable
erosion (vertical from the RLE runs, horizontal with running counts), the same band as
``boundary_ap.mask_boundary``. ``match_image``: lvis-api's greedy matching for every category and area
range of one image at once, exactly ``federated_eval._match`` applied per (image, category, area).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lvisctl.evaluation.federated_eval import greedy_match
from lvisctl.evaluation.numba_cache import ensure_cache_dir

ensure_cache_dir()  # a place for numba's cache even where site-packages and home are read-only


@njit(cache=True, nogil=True)
def _decode_counts(buf, start, end, out, escaped=False):  # pragma: no cover - compiled
    """pycocotools' ``rleFrString`` on ``buf[start:end]``, into ``out``; ``escaped``: the text is json (a
    backslash, a legal RLE character, is written as two). Returns the number of counts."""
    m = 0
    p = start
    while p < end:
        x = np.int64(0)
        k = 0
        more = True
        while more and p < end:
            c = np.int64(buf[p])
            if escaped and c == 92:
                p += 1
            c -= 48
            x |= (c & 0x1F) << (5 * k)
            more = (c & 0x20) != 0
            p += 1
            k += 1
            if not more and (c & 0x10) != 0:
                x |= np.int64(-1) << (5 * k)
        if m > 2:
            x += out[m - 2]
        out[m] = x
        m += 1
    return m


@njit(cache=True, nogil=True)
def _mask_bbox(cnts, n, height):  # pragma: no cover - compiled
    """(x0, y0, x1, y1) of the foreground (exclusive ends); x1 == x0 when the mask is empty."""
    x0, y0, x1, y1 = 1 << 40, 1 << 40, -1, -1
    pos = np.int64(0)
    for k in range(n):
        start = pos
        pos += cnts[k]
        if k % 2 == 0 or cnts[k] <= 0:
            continue
        xs, xe = start // height, (pos - 1) // height
        x0, x1 = min(x0, xs), max(x1, xe + 1)
        if xs == xe:
            y0, y1 = min(y0, start - xs * height), max(y1, pos - xe * height)
        else:  # the run wraps a column: it reaches the top and the bottom rows
            y0, y1 = 0, height
    if x1 < 0:
        return 0, 0, 0, 0
    return x0, y0, x1, y1


@njit(cache=True, nogil=True)
def _rle_intersection(ca, cb):  # pragma: no cover - compiled
    """Foreground pixels two RLEs (run lengths, background first) share: a merge of the two run lists."""
    na, nb = len(ca), len(cb)
    if na == 0 or nb == 0:
        return 0
    inter = np.int64(0)
    ia, ib = 0, 0
    sa, sb = np.int64(0), np.int64(0)  # the current runs: [sa, ea) and [sb, eb)
    ea, eb = ca[0], cb[0]
    while ia < na and ib < nb:
        if ia % 2 == 1 and ib % 2 == 1:
            lo, hi = max(sa, sb), min(ea, eb)
            if hi > lo:
                inter += hi - lo
        if ea <= eb:  # advance the run that ends first
            ia += 1
            sa = ea
            if ia < na:
                ea = sa + ca[ia]
        else:
            ib += 1
            sb = eb
            if ib < nb:
                eb = sb + cb[ib]
    return inter


@njit(cache=True, nogil=True)
def pair_ious(buf, offs, height, width, d, pair_a, pair_b, boundary):  # pragma: no cover - compiled
    """Matching values of the mask pairs ``(pair_a[p], pair_b[p])``; mask ``i`` is ``buf[offs[i]:offs[i+1]]``
    (a compressed RLE string), all of one image.

    Mask IoU exactly as pycocotools computes it (intersection / union in float64) where it can reach 0.5;
    0.0 where it provably cannot (disjoint boxes, or areas whose ratio is below 0.5: IoU <= min/max),
    which no matching threshold of 0.5-0.95 can tell apart. With ``boundary``: min(mask IoU, boundary
    IoU) for the pairs at or above 0.5, each mask's band computed once.
    """
    n_masks = len(offs) - 1
    need = np.zeros(n_masks, np.bool_)
    for p in range(len(pair_a)):
        need[pair_a[p]] = True
        need[pair_b[p]] = True
    cnts = np.zeros(max(1, offs[-1] - offs[0]), np.int64)
    cstart = np.zeros(n_masks + 1, np.int64)
    box = np.zeros((n_masks, 4), np.int64)  # x0, y0, x1, y1 (exclusive)
    areas = np.zeros(n_masks, np.int64)
    for i in range(n_masks):
        cstart[i + 1] = cstart[i]
        if not need[i]:
            continue
        m = _decode_counts(buf, offs[i], offs[i + 1], cnts[cstart[i] :])
        cstart[i + 1] = cstart[i] + m
        box[i, 0], box[i, 1], box[i, 2], box[i, 3] = _mask_bbox(cnts[cstart[i] :], m, height)
        for k in range(1, m, 2):
            areas[i] += cnts[cstart[i] + k]
    out = np.zeros(len(pair_a), np.float64)
    for p in range(len(pair_a)):
        a, b = pair_a[p], pair_b[p]
        if min(areas[a], areas[b]) < 0.5 * max(areas[a], areas[b]):
            continue
        if max(box[a, 0], box[b, 0]) >= min(box[a, 2], box[b, 2]):
            continue
        if max(box[a, 1], box[b, 1]) >= min(box[a, 3], box[b, 3]):
            continue
        ca, cb = cnts[cstart[a] : cstart[a + 1]], cnts[cstart[b] : cstart[b + 1]]
        inter = _rle_intersection(ca, cb)
        if inter > 0:
            out[p] = inter / (areas[a] + areas[b] - inter)
    if boundary:
        _apply_band_ious(out, cnts, cstart, box, pair_a, pair_b, height, d)
    return out


_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True, nogil=True)
def _set_rows(words, base, r0, r1):  # pragma: no cover - compiled
    """Set bits r0 .. r1 - 1 of the column bitset starting at ``words[base]`` (bit r: row r of the column
    relative to the column's first word)."""
    if r1 <= r0:
        return
    w0, w1 = r0 >> 6, (r1 - 1) >> 6
    lo = _ALL << np.uint64(r0 & 63)
    hi = _ALL >> np.uint64(63 - ((r1 - 1) & 63))
    if w0 == w1:
        words[base + w0] |= lo & hi
        return
    words[base + w0] |= lo
    for w in range(w0 + 1, w1):
        words[base + w] = _ALL
    words[base + w1] |= hi


@njit(cache=True, nogil=True)
def _popcount(x):  # pragma: no cover - compiled
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, nogil=True)
def _fill_band(cnts, height, x0, cw, wy0, nw, d, mask, vert, pre, suf, band):  # pragma: no cover - compiled
    """The inner boundary band of one mask as column bitsets (``band[x * nw + w]``: rows 64 (wy0 + w) ..
    of column x0 + x), over the mask's box; returns its pixel count.

    ``mask - erode(mask, (2d+1)^2 square)`` with the outside of the image as background, separably: the
    vertical erosion from the RLE runs (a run of rows [s, e) keeps [s + d, e - d)), the horizontal one as
    the AND of 2d + 1 neighbouring columns (van Herk / Gil-Werman prefix and suffix ANDs). Outside the
    box the mask is background, so the box is all the erosion needs.
    """
    size = cw * nw
    mask[:size] = 0
    vert[:size] = 0
    r_off = wy0 * 64
    # Foreground pieces per column; adjacent pieces of one column are merged (a zero-length background
    # run would otherwise split one vertical run in two and erode it wrongly).
    cur_x, cur_s, cur_e = -1, 0, 0
    pos = np.int64(0)
    for k in range(len(cnts)):
        start = pos
        pos += cnts[k]
        if k % 2 == 0 or cnts[k] <= 0:
            continue
        p = start
        while p < pos:
            x = p // height
            y = p - x * height
            y_end = min(height, y + (pos - p))
            p += y_end - y
            if x == cur_x and y == cur_e:
                cur_e = y_end
                continue
            if cur_x >= 0:
                base = (cur_x - x0) * nw
                _set_rows(mask, base, cur_s - r_off, cur_e - r_off)
                _set_rows(vert, base, cur_s + d - r_off, cur_e - d - r_off)
            cur_x, cur_s, cur_e = x, y, y_end
    if cur_x >= 0:
        base = (cur_x - x0) * nw
        _set_rows(mask, base, cur_s - r_off, cur_e - r_off)
        _set_rows(vert, base, cur_s + d - r_off, cur_e - d - r_off)
    k = 2 * d + 1
    # Prefix / suffix ANDs within blocks of k columns: the window [l, l + k - 1] is suf[l] & pre[l + k - 1].
    for x in range(cw):
        for w in range(nw):
            v = vert[x * nw + w]
            pre[x * nw + w] = v if x % k == 0 else pre[(x - 1) * nw + w] & v
    for x in range(cw - 1, -1, -1):
        for w in range(nw):
            v = vert[x * nw + w]
            suf[x * nw + w] = v if x % k == k - 1 or x == cw - 1 else suf[(x + 1) * nw + w] & v
    area = 0
    for x in range(cw):
        lo, hi = x - d, x + d  # the window; columns outside the box are background
        for w in range(nw):
            eroded = np.uint64(0)
            if lo >= 0 and hi < cw:
                eroded = suf[lo * nw + w] & pre[hi * nw + w]
            b = mask[x * nw + w] & ~eroded
            band[x * nw + w] = b
            area += _popcount(b)
    return area


@njit(cache=True, nogil=True)
def _apply_band_ious(out, cnts, cstart, box, pair_a, pair_b, height, d):  # pragma: no cover - compiled
    """``out[p] = min(out[p], boundary IoU)`` for the pairs with ``out[p] >= 0.5``."""
    n_masks = len(cstart) - 1
    need = np.zeros(n_masks, np.bool_)
    for p in range(len(pair_a)):
        if out[p] >= 0.5:
            need[pair_a[p]] = True
            need[pair_b[p]] = True
    geo = np.zeros((n_masks, 5), np.int64)  # x0, cw, wy0, nw, pool offset
    total = 0
    biggest = 1
    for i in range(n_masks):
        if not need[i] or box[i, 2] <= box[i, 0]:
            continue
        cw = box[i, 2] - box[i, 0]
        wy0, wy1 = box[i, 1] >> 6, ((box[i, 3] - 1) >> 6) + 1
        geo[i, 0], geo[i, 1], geo[i, 2], geo[i, 3], geo[i, 4] = box[i, 0], cw, wy0, wy1 - wy0, total
        total += cw * (wy1 - wy0)
        biggest = max(biggest, cw * (wy1 - wy0))
    pool = np.zeros(max(total, 1), np.uint64)
    scratch = np.zeros((4, biggest), np.uint64)
    areas = np.zeros(n_masks, np.int64)
    for i in range(n_masks):
        if not need[i] or geo[i, 1] == 0:
            continue
        x0, cw, wy0, nw, off = geo[i, 0], geo[i, 1], geo[i, 2], geo[i, 3], geo[i, 4]
        band = pool[off : off + cw * nw]
        c = cnts[cstart[i] : cstart[i + 1]]
        areas[i] = _fill_band(
            c, height, x0, cw, wy0, nw, d, scratch[0], scratch[1], scratch[2], scratch[3], band
        )
    for p in range(len(pair_a)):
        if out[p] < 0.5:
            continue
        a, b = pair_a[p], pair_b[p]
        ax0, acw, awy0, anw, aoff = geo[a, 0], geo[a, 1], geo[a, 2], geo[a, 3], geo[a, 4]
        bx0, bcw, bwy0, bnw, boff = geo[b, 0], geo[b, 1], geo[b, 2], geo[b, 3], geo[b, 4]
        inter = 0
        w0, w1 = max(awy0, bwy0), min(awy0 + anw, bwy0 + bnw)
        for x in range(max(ax0, bx0), min(ax0 + acw, bx0 + bcw)):
            ca = aoff + (x - ax0) * anw - awy0
            cb = boff + (x - bx0) * bnw - bwy0
            for w in range(w0, w1):
                inter += _popcount(pool[ca + w] & pool[cb + w])
        biou = inter / (areas[a] + areas[b] - inter) if areas[a] + areas[b] > 0 else 0.0
        out[p] = min(out[p], biou)


# lvis-api's greedy matching at one threshold, compiled from the readable reference's own function (one
# call per threshold and area range: a call per detection made the matcher about twice as slow)
_greedy_match = njit(cache=True, nogil=True)(greedy_match)


@njit(cache=True, nogil=True)
def match_image(
    ious, det_cat, det_area, det_nexh, gt_cat, gt_area, gt_ign, area_rng, thrs
):  # pragma: no cover
    """lvis-api's ``evaluate_img`` matching for every (category, area range) of one image.

    ``ious[d, g]`` is read only where ``det_cat[d] == gt_cat[g]``; detections are in score order (highest
    first, ties in file order), GTs in file order. Returns the matched and ignored bits of each detection
    (bit t = threshold t) per area range, and which GTs count (not ignored) per area range. Each detection
    visits only the GTs of its category (a block of the GT order below), not every GT per threshold.
    """
    num_dt, num_gt = ious.shape
    num_a, num_t = area_rng.shape[0], len(thrs)
    m_bits = np.zeros((num_dt, num_a), np.uint16)
    ig_bits = np.zeros((num_dt, num_a), np.uint16)
    gt_valid = np.zeros((num_gt, num_a), np.bool_)
    g_ig = np.zeros(num_gt, np.bool_)
    matched = np.empty(num_dt, np.int64)
    # Each detection's block of same-category GTs in the (category, ignored, file order) order below:
    # the blocks do not depend on the area range, only the order inside them does.
    by_cat = np.argsort(gt_cat * (num_gt + 1) + np.arange(num_gt))
    lo = np.zeros(num_dt, np.int64)
    hi = np.zeros(num_dt, np.int64)
    for di in range(num_dt):
        c = det_cat[di]
        k = 0
        while k < num_gt and gt_cat[by_cat[k]] < c:
            k += 1
        lo[di] = k
        while k < num_gt and gt_cat[by_cat[k]] == c:
            k += 1
        hi[di] = k
    key = np.empty(num_gt, np.int64)
    for a in range(num_a):
        alo, ahi = area_rng[a, 0], area_rng[a, 1]
        for g in range(num_gt):
            g_ig[g] = gt_ign[g] or gt_area[g] < alo or gt_area[g] > ahi
            gt_valid[g, a] = not g_ig[g]
            # GTs by category, then not-ignored before ignored, then file order (lvis-api's mergesort).
            key[g] = (gt_cat[g] * 2 + (1 if g_ig[g] else 0)) * (num_gt + 1) + g
        perm = np.argsort(key)
        for t in range(num_t):
            _greedy_match(ious, perm, lo, hi, g_ig, thrs[t], matched)
            for di in range(num_dt):
                m = matched[di]
                if m > -1:
                    m_bits[di, a] |= np.uint16(1 << t)
                    if g_ig[m]:
                        ig_bits[di, a] |= np.uint16(1 << t)
        for di in range(num_dt):
            if det_area[di] < alo or det_area[di] > ahi or det_nexh[di]:
                ig_bits[di, a] |= ~m_bits[di, a] & np.uint16((1 << num_t) - 1)
    return m_bits, ig_bits, gt_valid
