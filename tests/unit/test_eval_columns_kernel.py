"""``_columns_kernel``'s ordering and accumulation against lvis-api's own numpy code (``LVISEval.accumulate``:
a mergesort by score per category, cumulative sums, the precision envelope, ``searchsorted`` at the recall
thresholds), on random match bits: the same numbers to the last bit."""

from __future__ import annotations

import numpy as np
import pytest

from lvisctl.evaluation.federated_eval import IOU_THRS, REC_THRS

pytest.importorskip("numba")


def _lvis_api_accumulate(m_rows, ig_rows, num_gt):
    """lvis-api 0.5.3's accumulate for one category and area range (rows already in score order)."""
    num_t, num_r = len(IOU_THRS), len(REC_THRS)
    precision, recall = -np.ones((num_t, num_r)), -np.ones(num_t)
    if num_gt == 0:
        return precision, recall
    dt_m = np.array([[(m >> t) & 1 for m in m_rows] for t in range(num_t)], bool).reshape(num_t, -1)
    dt_ig = np.array([[(g >> t) & 1 for g in ig_rows] for t in range(num_t)], bool).reshape(num_t, -1)
    tps = np.logical_and(dt_m, np.logical_not(dt_ig))
    fps = np.logical_and(np.logical_not(dt_m), np.logical_not(dt_ig))
    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
        tp, fp = np.array(tp), np.array(fp)
        num_tp = len(tp)
        rc = tp / num_gt
        recall[t] = rc[-1] if num_tp else 0
        pr = tp / (fp + tp + np.spacing(1))
        pr = pr.tolist()
        for i in range(num_tp - 1, 0, -1):
            if pr[i] > pr[i - 1]:
                pr[i - 1] = pr[i]
        idx = np.searchsorted(rc, REC_THRS, side="left")
        pr_at_recall = [0.0] * num_r
        try:
            for _idx, pr_idx in enumerate(idx):
                pr_at_recall[_idx] = pr[pr_idx]
        except IndexError:
            pass
        precision[t] = np.array(pr_at_recall)
    return precision, recall


@pytest.mark.parametrize("seed", range(6))
def test_order_and_accumulate_equal_lvis_api(seed):
    from lvisctl.evaluation._columns_kernel import accumulate, category_order

    rng = np.random.default_rng(seed)
    num_img, num_k, num_a, num_t = 30, 4, 3, len(IOU_THRS)
    counts = rng.integers(0, 25, num_img)
    o_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    o_n = np.array([int(rng.integers(0, c + 1)) for c in counts], np.int64)  # rows kept per image
    total = int(o_start[-1])
    o_cat = rng.integers(0, num_k, total).astype(np.int64)
    o_score = np.round(rng.random(total), 2)  # ties
    num_gt = rng.integers(0, 15, (num_k, num_a)).astype(np.int64)
    o_m = np.zeros((total, num_a), np.uint16)
    o_ig = (rng.random((total, num_a)) < 0.2) * rng.integers(0, 1 << num_t, (total, num_a))
    o_ig = o_ig.astype(np.uint16)
    for k in range(num_k):  # a GT is matched once per threshold: at most num_gt matches per (k, a, t)
        rows = np.flatnonzero(o_cat == k)
        for a in range(num_a):
            for t in range(num_t):
                hit = rng.permutation(rows)[: int(rng.integers(0, num_gt[k, a] + 1))]
                o_m[hit, a] |= np.uint16(1 << t)
                o_ig[hit, a] &= np.uint16(~(1 << t) & 0xFFFF)
    bounds, m_bits, ig_bits = category_order(o_start, o_n, o_cat, o_score, o_m, o_ig, num_k)
    kept = np.concatenate([np.arange(o_start[i], o_start[i] + o_n[i]) for i in range(num_img)])
    order = kept[np.lexsort((-o_score[kept], o_cat[kept]))]  # lvis-api: mergesort by -score per category
    assert np.array_equal(m_bits, o_m[order]) and np.array_equal(ig_bits, o_ig[order])
    assert np.array_equal(bounds, np.searchsorted(o_cat[order], np.arange(num_k + 1)))
    precision = -np.ones((num_t, len(REC_THRS), num_k, num_a))
    recall = -np.ones((num_t, num_k, num_a))
    accumulate(0, num_k, bounds, m_bits, ig_bits, num_gt, REC_THRS, precision, recall)
    for k in range(num_k):
        rows = slice(bounds[k], bounds[k + 1])
        for a in range(num_a):
            want_p, want_r = _lvis_api_accumulate(m_bits[rows, a], ig_bits[rows, a], num_gt[k, a])
            assert np.array_equal(precision[:, :, k, a], want_p), (k, a)
            assert np.array_equal(recall[:, k, a], want_r), (k, a)
