"""numba kernels of Boundary AP (imported lazily; ``boundary_ap`` / ``federated_eval`` fall back to numpy).

``crop_band``: the window of an RLE mask and its inner boundary band in one pass over the window, exactly
``decode_crop`` + ``mask_boundary``. ``greedy_match``: lvis-api's matching loop, exactly ``_match``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def crop_band(cnts, height, x0, y0, x1, y1, d):  # pragma: no cover - compiled
    h, w = y1 - y0, x1 - x0
    mask = np.zeros((h, w), np.uint8)
    pos = 0
    for k in range(len(cnts)):
        start, end = pos, pos + cnts[k]
        pos = end
        if k % 2 == 0 or end <= x0 * height or start >= x1 * height:
            continue
        p, e = max(start, x0 * height), min(end, x1 * height)
        while p < e:  # column by column: the run's part in column x is rows y .. y_end
            x = p // height
            y = p - x * height
            y_end = min(height, y + (e - p))
            for yy in range(max(y, y0), min(y_end, y1)):
                mask[yy - y0, x - x0] = 1
            p += y_end - y
    # Integral image of the mask zero-padded by d + 1, as mask_boundary.
    ph, pw = h + 2 * (d + 1), w + 2 * (d + 1)
    integral = np.zeros((ph + 1, pw + 1), np.int32)
    for i in range(ph):
        row = 0
        for j in range(pw):
            yi, xj = i - d - 1, j - d - 1
            if 0 <= yi < h and 0 <= xj < w:
                row += mask[yi, xj]
            integral[i + 1, j + 1] = integral[i, j + 1] + row
    k = 2 * d + 1
    band = np.zeros((h, w), np.uint8)
    for i in range(h):
        for j in range(w):
            if mask[i, j] == 0:
                continue
            # padded rows i + 1 .. i + k and cols j + 1 .. j + k: the (2d+1)^2 window centred on (i, j)
            a, b, c, e = i + 1, i + k + 1, j + 1, j + k + 1
            s = integral[b, e] - integral[a, e] - integral[b, c] + integral[a, c]
            if s != k * k:
                band[i, j] = 1
    return band


@njit(cache=True, nogil=True)
def greedy_match(ious, gt_ignore, thresholds):  # pragma: no cover - compiled
    num_dt, num_gt = ious.shape
    dt_m = np.zeros((len(thresholds), num_dt), np.bool_)
    dt_ig = np.zeros((len(thresholds), num_dt), np.bool_)
    for t in range(len(thresholds)):
        gt_taken = np.zeros(num_gt, np.bool_)
        for di in range(num_dt):
            best = min(thresholds[t], 1 - 1e-10)
            m = -1
            for g in range(num_gt):
                if gt_taken[g]:
                    continue
                if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                    break
                if ious[di, g] < best:
                    continue
                best = ious[di, g]
                m = g
            if m > -1:
                gt_taken[m] = True
                dt_m[t, di] = True
                dt_ig[t, di] = gt_ignore[m]
    return dt_m, dt_ig
