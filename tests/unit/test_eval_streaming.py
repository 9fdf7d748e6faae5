"""The streaming federated matcher (``streaming_eval``) that ``evaluate --metrics boundary|fixed`` runs:
the same numbers as lvis-api (plain mask IoU), as the Boundary IoU API's definition (Boundary AP) and as
lvis-api without any cap (Fixed AP), on hand-made and generated cases with many images."""

from __future__ import annotations

import copy

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from lvisctl.evaluation.boundary_ap import boundary_width, gt_with_rles, mask_boundary
from lvisctl.evaluation.federated_eval import federated_eval
from lvisctl.evaluation.fixed_ap import FIXED_KEYS, fixed_ap_streaming, top_k_per_category
from lvisctl.evaluation.lvis_metrics import load_ground_truth, quiet_native_output
from lvisctl.evaluation.streaming_eval import Task, boundary_ap_streaming, stream_federated
from tests.helpers.eval_cases import api_iou, blob_case, edge_case_gt, edge_case_results, random_case
from tests.helpers.lvis_reference import (
    LVIS,
    LVISEval,
    LVISResults,
    lvis_api_metrics,
    without_bbox,
    write_json,
)


def _load(tmp_path, data, dets):
    gt_path = write_json(tmp_path / "gt.json", data)
    res_path = write_json(tmp_path / "res.json", dets)
    gt = load_ground_truth(gt_path)
    with quiet_native_output():
        parsed = gt.coco.load_res(str(res_path))
    return gt_path, gt, parsed


CASES = {
    "edge": lambda: (edge_case_gt(), edge_case_results()),
    "edge_no_bbox": lambda: (edge_case_gt(), without_bbox(edge_case_results())),
    "random_many_images": lambda: random_case(7, num_images=60),
    "blobs": lambda: blob_case(1, num_images=12),
}


@pytest.mark.parametrize("case", list(CASES))
def test_streaming_mask_ap_equals_lvis_api(tmp_path, case):
    """Plain mask IoU with the 300 cap: the 13 official numbers, to the last bit of lvis-api's."""
    data, dets = CASES[case]()
    gt_path, gt, parsed = _load(tmp_path, data, dets)
    ((res, _),) = stream_federated(gt, parsed, [Task("segm")])
    ref = lvis_api_metrics(gt_path, dets, "segm")
    assert res == pytest.approx(ref, abs=1e-12)
    assert ref["AP"] > 0


def big_blob_case(seed: int, num_images: int = 6):
    """Blobs on 150-300 px images: a band 4-8 px wide (d > 1), masks over 64 rows (several bitset words),
    many on the image border, with jittered copies as detections."""
    return blob_case(seed, num_images, size=(150, 301), block=25, thresh=0.5, copies=4, shift=6)


@pytest.mark.parametrize("case", ["edge", "random_many_images", "blobs", "big_blobs"])
def test_streaming_boundary_ap_equals_the_api_definition(tmp_path, case):
    """Boundary AP streamed (bitset bands, bands only where mask IoU >= 0.5) equals the Boundary IoU API's
    definition computed on whole images for every pair, summary and per category, bit for bit."""
    data, dets = {**CASES, "big_blobs": lambda: big_blob_case(2)}[case]()
    _, gt, parsed = _load(tmp_path, data, dets)
    fast = boundary_ap_streaming(gt, parsed)
    imgs = {i["id"]: i for i in data["images"]}
    ref, ref_per_cat = federated_eval(imgs, gt.categories, gt_with_rles(gt.coco), dets, api_iou)
    assert fast.metrics == ref
    assert fast.per_category_ap == pytest.approx(ref_per_cat, nan_ok=True, abs=0)
    assert ref["AP"] > 0


def test_pair_kernel_equals_pycocotools_iou_and_the_band():
    """The kernel's mask IoU equals pycocotools' wherever it can reach 0.5 (0 elsewhere), and its boundary
    IoU is the IoU of ``mask_boundary`` bands, on random blobs crossing bitset words and image borders."""
    from lvisctl.evaluation._stream_kernel import pair_ious

    rng = np.random.default_rng(3)
    h, w = 170, 130
    d = boundary_width(h, w)
    masks = []
    for _ in range(12):
        noise = rng.normal(size=(h // 20 + 2, w // 20 + 2))
        base = np.kron(noise, np.ones((20, 20)))[:h, :w] > 0.3
        masks.append(base)
        masks.append(np.roll(base, int(rng.integers(-5, 6)), axis=int(rng.integers(0, 2))))
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    strings = [r["counts"] for r in rles]
    offs = np.concatenate([[0], np.cumsum([len(s) for s in strings])]).astype(np.int64)
    buf = np.frombuffer(b"".join(strings), np.uint8)
    pa, pb = (x.ravel().astype(np.int64) for x in np.meshgrid(np.arange(len(masks)), np.arange(len(masks))))
    mask_only = pair_ious(buf, offs, h, w, d, pa, pb, False)
    both = pair_ious(buf, offs, h, w, d, pa, pb, True)
    ref = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles))).T.ravel()
    high = ref >= 0.5
    assert high.sum() > len(masks) and (~high).sum() > 0
    assert np.array_equal(mask_only[high], ref[high]) and (mask_only[~high] < 0.5).all()
    bands = [mask_boundary(m, d).astype(bool) for m in masks]
    for p in np.flatnonzero(high):
        a, b = bands[pa[p]], bands[pb[p]]
        inter, union = int((a & b).sum()), int((a | b).sum())
        assert both[p] == min(ref[p], inter / union)


def _lvis_api_uncapped(gt_path, dets, iou_type, k):
    """lvis-api with ``max_dets=-1`` on the per-category top-k: Fixed AP by its definition."""
    gt = LVIS(str(gt_path))
    res = LVISResults(gt, copy.deepcopy(top_k_per_category(dets, k)), max_dets=-1)
    ev = LVISEval(gt, res, iou_type=iou_type)
    ev.run()
    return {key: float(ev.get_results()[key]) for key in FIXED_KEYS}


@pytest.mark.parametrize(("case", "k"), [("edge", 3), ("edge", 10_000), ("random_many_images", 5)])
def test_streaming_fixed_ap_equals_uncapped_lvis_api(tmp_path, case, k):
    """Fixed AP (no cap at all: the edge case has 301 detections of one category on one image) equals
    lvis-api run with max_dets=-1 on the top-k per category, segm and bbox."""
    data, dets = CASES[case]()
    gt_path, gt, parsed = _load(tmp_path, data, dets)
    out = fixed_ap_streaming(gt, parsed, ("segm", "bbox"), k=k)
    for iou_type in ("segm", "bbox"):
        ref = _lvis_api_uncapped(gt_path, dets, iou_type, k)
        assert out[iou_type].metrics == pytest.approx(ref, abs=1e-12), iou_type
        assert ref["AP"] > 0


def test_one_pass_serves_several_tasks_as_separate_passes(tmp_path):
    """Tasks share the image loop: the results equal each task streamed alone."""
    data, dets = random_case(11, num_images=20)
    _, gt, parsed = _load(tmp_path, data, dets)
    together = stream_federated(gt, parsed, [Task("boundary"), Task("bbox", max_dets=-1, top_k=4)])
    alone = [
        stream_federated(gt, parsed, [t])[0] for t in (Task("boundary"), Task("bbox", max_dets=-1, top_k=4))
    ]
    for (res, per_cat), (ref, ref_per_cat) in zip(together, alone, strict=True):
        assert res == ref
        assert per_cat == pytest.approx(ref_per_cat, nan_ok=True, abs=0)
