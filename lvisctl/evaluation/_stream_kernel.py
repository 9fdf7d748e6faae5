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


@njit(cache=True, nogil=True)
def _decode_counts(buf, start, end, out):  # pragma: no cover - compiled
    """pycocotools' ``rleFrString`` on ``buf[start:end]``, into ``out``; returns the number of counts."""
    m = 0
    p = start
    while p < end:
        x = np.int64(0)
        k = 0
        more = True
        while more and p < end:
            c = np.int64(buf[p]) - 48
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
def _emit(mask, vert, base, y0, y1, d):  # pragma: no cover - compiled
    """One vertical foreground run (rows y0 .. y1 of a column) and its vertical erosion by d."""
    for yy in range(y0, y1):
        mask[base + yy] = 1
    for yy in range(y0 + d, y1 - d):  # rows outside the image are background
        vert[base + yy] = 1


@njit(cache=True, nogil=True)
def _fill_band(cnts, n, height, x0, y0, cw, ch, d, mask, vert, cnt, band):  # pragma: no cover - compiled
    """The band of one mask on its crop, x-major (``band[x * ch + y]``); returns its pixel count.

    The crop reaches d + 1 past the mask (or the image edge, whose outside is background), so treating
    the outside of the crop as background is exact, as in ``boundary_ap.boundary_crop``.
    """
    size = cw * ch
    mask[:size] = 0
    vert[:size] = 0
    # Foreground pieces per column, adjacent pieces of one column merged (a zero-length background run
    # would otherwise split one vertical run in two and erode it wrongly).
    cur_x, cur_s, cur_e = -1, 0, 0
    pos = np.int64(0)
    for k in range(n):
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
                _emit(mask, vert, (cur_x - x0) * ch - y0, cur_s, cur_e, d)
            cur_x, cur_s, cur_e = x, y, y_end
    if cur_x >= 0:
        _emit(mask, vert, (cur_x - x0) * ch - y0, cur_s, cur_e, d)
    k2 = 2 * d + 1
    cnt[:ch] = 0
    area = 0
    for j in range(cw + d):
        if j < cw:
            col = j * ch
            for i in range(ch):
                cnt[i] = cnt[i] + 1 if vert[col + i] else 0
        jc = j - d  # the window j - 2d .. j is centred on column jc
        if jc < 0:
            continue
        col = jc * ch
        for i in range(ch):
            if mask[col + i] and not (j < cw and cnt[i] >= k2):
                band[col + i] = 1
                area += 1
    return area


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
        _apply_band_ious(out, cnts, cstart, box, pair_a, pair_b, height, width, d)
    return out


@njit(cache=True, nogil=True)
def _apply_band_ious(out, cnts, cstart, box, pair_a, pair_b, height, width, d):  # pragma: no cover
    """``out[p] = min(out[p], boundary IoU)`` for the pairs with ``out[p] >= 0.5``."""
    n_masks = len(cstart) - 1
    need = np.zeros(n_masks, np.bool_)
    for p in range(len(pair_a)):
        if out[p] >= 0.5:
            need[pair_a[p]] = True
            need[pair_b[p]] = True
    geo = np.zeros((n_masks, 5), np.int64)  # x0, y0, cw, ch, pool offset
    total = 0
    biggest = 1
    for i in range(n_masks):
        if not need[i] or box[i, 2] <= box[i, 0]:
            continue
        cx0, cy0 = max(box[i, 0] - d - 1, 0), max(box[i, 1] - d - 1, 0)
        cx1, cy1 = min(box[i, 2] + d + 1, width), min(box[i, 3] + d + 1, height)
        geo[i, 0], geo[i, 1], geo[i, 2], geo[i, 3], geo[i, 4] = cx0, cy0, cx1 - cx0, cy1 - cy0, total
        total += (cx1 - cx0) * (cy1 - cy0)
        biggest = max(biggest, (cx1 - cx0) * (cy1 - cy0))
    pool = np.zeros(max(total, 1), np.uint8)
    mask = np.zeros(biggest, np.uint8)
    vert = np.zeros(biggest, np.uint8)
    cnt = np.zeros(height + 1, np.int64)
    areas = np.zeros(n_masks, np.int64)
    for i in range(n_masks):
        if not need[i] or geo[i, 2] == 0:
            continue
        x0, y0, cw, ch, off = geo[i, 0], geo[i, 1], geo[i, 2], geo[i, 3], geo[i, 4]
        m = cstart[i + 1] - cstart[i]
        band = pool[off : off + cw * ch]
        areas[i] = _fill_band(cnts[cstart[i] :], m, height, x0, y0, cw, ch, d, mask, vert, cnt, band)
    for p in range(len(pair_a)):
        if out[p] < 0.5:
            continue
        a, b = pair_a[p], pair_b[p]
        inter = 0
        ax0, ay0, acw, ach, aoff = geo[a, 0], geo[a, 1], geo[a, 2], geo[a, 3], geo[a, 4]
        bx0, by0, bcw, bch, boff = geo[b, 0], geo[b, 1], geo[b, 2], geo[b, 3], geo[b, 4]
        ox0, oy0 = max(ax0, bx0), max(ay0, by0)
        ox1, oy1 = min(ax0 + acw, bx0 + bcw), min(ay0 + ach, by0 + bch)
        for x in range(ox0, ox1):
            ca = aoff + (x - ax0) * ach - ay0
            cb = boff + (x - bx0) * bch - by0
            for y in range(oy0, oy1):
                inter += pool[ca + y] & pool[cb + y]
        biou = inter / (areas[a] + areas[b] - inter) if areas[a] + areas[b] > 0 else 0.0
        out[p] = min(out[p], biou)


@njit(cache=True, nogil=True)
def match_image(ious, det_cat, det_area, det_nexh, gt_cat, gt_area, gt_ign, area_rng, thrs):  # pragma: no cover
    """lvis-api's ``evaluate_img`` matching for every (category, area range) of one image.

    ``ious[d, g]`` is read only where ``det_cat[d] == gt_cat[g]``; detections are in score order (highest
    first, ties in file order), GTs in file order. Returns the matched and ignored bits of each detection
    (bit t = threshold t) per area range, and which GTs count (not ignored) per area range.
    """
    num_dt, num_gt = ious.shape
    num_a, num_t = area_rng.shape[0], len(thrs)
    m_bits = np.zeros((num_dt, num_a), np.uint16)
    ig_bits = np.zeros((num_dt, num_a), np.uint16)
    gt_valid = np.zeros((num_gt, num_a), np.bool_)
    g_ig = np.zeros(num_gt, np.bool_)
    taken = np.zeros(num_gt, np.bool_)
    for a in range(num_a):
        lo, hi = area_rng[a, 0], area_rng[a, 1]
        for g in range(num_gt):
            g_ig[g] = gt_ign[g] or gt_area[g] < lo or gt_area[g] > hi
            gt_valid[g, a] = not g_ig[g]
        # GTs by category, then not-ignored before ignored, then file order (lvis-api's mergesort).
        key = np.empty(num_gt, np.int64)
        for g in range(num_gt):
            key[g] = (gt_cat[g] * 2 + (1 if g_ig[g] else 0)) * (num_gt + 1) + g
        perm = np.argsort(key)
        for t in range(num_t):
            taken[:] = False
            for di in range(num_dt):
                c = det_cat[di]
                best = min(thrs[t], 1 - 1e-10)
                m = -1
                for gi in range(num_gt):
                    g = perm[gi]
                    if gt_cat[g] != c or taken[g]:
                        continue
                    if m > -1 and not g_ig[m] and g_ig[g]:
                        break
                    if ious[di, g] < best:
                        continue
                    best = ious[di, g]
                    m = g
                if m > -1:
                    taken[m] = True
                    m_bits[di, a] |= np.uint16(1 << t)
                    if g_ig[m]:
                        ig_bits[di, a] |= np.uint16(1 << t)
        for di in range(num_dt):
            if det_area[di] < lo or det_area[di] > hi or det_nexh[di]:
                ig_bits[di, a] |= ~m_bits[di, a] & np.uint16((1 << num_t) - 1)
    return m_bits, ig_bits, gt_valid
