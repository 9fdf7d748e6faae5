"""Which detections count, checked against the reference code itself (issue 20, items 1 and 2).

lvis-api 0.5.3 (installed) scores only results and GT of area > 0, after its 300-per-image cap; the
Boundary IoU API leaves out ``area >= hi`` of an area range where lvis-api leaves out ``area > hi``. The case
below has empty masks, zero-area boxes, a GT of area 0 and objects of area exactly 32**2 and 96**2.
"""

from __future__ import annotations

import copy

import pytest

from lvisctl.evaluation.boundary_ap import boundary_ap, gt_with_rles
from lvisctl.evaluation.federated_eval import federated_eval
from lvisctl.evaluation.fixed_ap import FIXED_KEYS, fixed_ap_streaming, top_k_per_category
from lvisctl.evaluation.lvis_metrics import (
    METRIC_KEYS,
    evaluate_lvis,
    load_ground_truth,
    load_results_for_eval,
    quiet_native_output,
)
from lvisctl.evaluation.pipeline import run_evaluate
from lvisctl.evaluation.streaming_eval import Task, boundary_ap_streaming, stream_federated
from tests.helpers.lvis_reference import (
    LVIS,
    LVISEval,
    LVISResults,
    det_rect,
    gt_rect,
    lvis_api_metrics,
    lvis_category,
    lvis_dataset,
    lvis_image,
    without_bbox,
    write_json,
)

CATS = [lvis_category(1, "f"), lvis_category(2, "c"), lvis_category(3, "r")]
S = 128  # image side


def empty_mask(img: int, cat: int, score: float, box=(3.0, 3.0, 10.0, 10.0)) -> dict:
    """An all-zero mask (what a box outside the image or an all-below-threshold mask gives)."""
    d = det_rect(img, cat, score, 0, 0, 0, 0, S, S)
    d["bbox"] = list(box)
    return d


def area_case() -> tuple[dict, list[dict]]:
    images = [lvis_image(1, S, S), lvis_image(2, S, S, neg=[2]), lvis_image(3, S, S), lvis_image(4, S, S)]
    zero = gt_rect(6, 3, 1, 60, 60, 1, 1)
    zero["area"] = 0.0  # a GT of area 0: neither a positive nor a match target in lvis-api
    anns = [
        gt_rect(1, 1, 1, 10, 10, 32, 32),  # area 1024 exactly
        gt_rect(2, 1, 2, 32, 0, 96, 96),  # area 9216 exactly
        gt_rect(3, 2, 1, 0, 0, 20, 20),
        gt_rect(4, 3, 3, 5, 5, 10, 10),
        gt_rect(5, 4, 1, 0, 0, 30, 30),
        zero,
    ]
    dets = [
        det_rect(1, 1, 0.9, 10, 10, 32, 32, S, S),
        det_rect(1, 2, 0.8, 32, 0, 96, 96, S, S),
        det_rect(2, 1, 0.7, 1, 0, 20, 20, S, S),
        det_rect(3, 3, 0.6, 5, 5, 10, 10, S, S),
        det_rect(3, 1, 0.5, 60, 60, 5, 5, S, S),  # on the area-0 GT's category: not verified once it goes
    ]
    dets += [empty_mask(i, c, 0.95) for i, c in [(1, 1), (1, 2), (2, 1), (3, 3), (2, 2)]]
    zero_box = det_rect(1, 1, 0.97, 10, 10, 4, 4, S, S)
    zero_box["bbox"] = [10.0, 10.0, 0.0, 5.0]  # zero-area box, non-empty mask
    dets.append(zero_box)
    # Image 4: 3 empty masks at the top take slots under the 300 cap (lvis-api caps first), so the
    # exact match at rank 301 is capped out; dropping the empties before the cap would keep it.
    dets += [empty_mask(4, 1, 0.99) for _ in range(3)]
    dets += [det_rect(4, 1, 0.5 + i * 1e-4, 60, 60, 8 + i % 5, 8, S, S) for i in range(297)]
    dets.append(det_rect(4, 1, 0.01, 0, 0, 30, 30, S, S))
    return lvis_dataset(images, anns, CATS), dets


def _paths(tmp_path, results):
    gt, _ = area_case()
    return write_json(tmp_path / "gt.json", gt), write_json(tmp_path / "res.json", results)


@pytest.mark.parametrize("with_bbox", [True, False])
def test_official_metrics_drop_area_zero_as_lvis_api(tmp_path, with_bbox):
    """segm and bbox through hotcoco (evaluate, training eval, analyze, adapters): lvis-api's 13 numbers."""
    _, dets = area_case()
    dets = dets if with_bbox else without_bbox(dets)
    gt_path, res_path = _paths(tmp_path, dets)
    ground = load_ground_truth(gt_path)
    loaded = load_results_for_eval(res_path, ground)
    iou_types = ("segm", "bbox") if with_bbox else ("segm",)
    out = evaluate_lvis(loaded, ground, iou_types)
    for t in iou_types:
        ref = lvis_api_metrics(gt_path, res_path, t)
        for key in METRIC_KEYS:
            assert out[t].metrics[key] == pytest.approx(ref[key], abs=1e-9), (t, key)
    # with boxes, lvis-api takes box areas: only the zero-area box goes; without, the 8 empty masks
    dropped = 1 if with_bbox else 8
    assert len(loaded.notes) == 1 and f": {dropped} detection(s) of area 0" in loaded.notes[0]


@pytest.mark.parametrize("kind", ["segm", "bbox"])
def test_streamed_matcher_drops_area_zero_as_lvis_api(tmp_path, kind):
    """The stream under Boundary / Fixed AP, with plain IoU, gives lvis-api's numbers on the same case."""
    _, dets = area_case()
    dets = dets if kind == "bbox" else without_bbox(dets)
    gt_path, res_path = _paths(tmp_path, dets)
    gt = load_ground_truth(gt_path)
    with quiet_native_output():
        parsed = gt.coco.load_res(str(res_path))
    ((res, _),) = stream_federated(gt, parsed, [Task(kind)])
    assert res == pytest.approx(lvis_api_metrics(gt_path, res_path, kind), abs=1e-12)


def test_readable_reference_drops_area_zero_as_lvis_api(tmp_path):
    import pycocotools.mask as mask_utils

    data, dets = area_case()
    dets = without_bbox(dets)
    gt_path, res_path = _paths(tmp_path, dets)
    gt = load_ground_truth(gt_path)

    def mask_iou(d, g):
        segs = [x["segmentation"] for x in d], [x["segmentation"] for x in g]
        return mask_utils.iou(*segs, [0] * len(g))

    images = {i["id"]: i for i in data["images"]}
    res, _ = federated_eval(images, gt.categories, gt_with_rles(gt.coco), dets, mask_iou)
    assert res == pytest.approx(lvis_api_metrics(gt_path, res_path, "segm"), abs=1e-12)


@pytest.mark.parametrize("k", [2, 10_000])
def test_fixed_ap_drops_area_zero_after_the_top_k(tmp_path, k):
    """large-vocab-devil's scripts/evaluate_ap_fixed.py: top-k per category at load (empty masks rank),
    then lvis-api with max_dets=-1, whose _prepare drops area 0."""
    _, dets = area_case()
    dets = without_bbox(dets)
    gt_path, res_path = _paths(tmp_path, dets)
    gt = load_ground_truth(gt_path)
    with quiet_native_output():
        parsed = gt.coco.load_res(str(res_path))
    out = fixed_ap_streaming(gt, parsed, ("segm",), k=k)
    lvis_gt = LVIS(str(gt_path))
    ref_res = LVISResults(lvis_gt, copy.deepcopy(top_k_per_category(dets, k)), max_dets=-1)
    ev = LVISEval(lvis_gt, ref_res, iou_type="segm")
    ev.params.max_dets = -1
    ev.run()
    ref = {key: float(ev.get_results()[key]) for key in FIXED_KEYS}
    assert out["segm"].metrics == pytest.approx(ref, abs=1e-12)


def boundary_case() -> tuple[dict, list[dict]]:
    """GT of area 32**2 and 96**2, their exact masks, a disjoint 32x32 FP ranked first, an empty mask.

    Boundary IoU API (area >= hi out): small [0, 1024) has no GT -> APs -1; medium [1024, 9216) holds
    the 1024 GT, FP then TP -> APm 0.5; large holds the 9216 GT -> APl 1. lvis-api's inclusive ranges put
    the 1024 GT in small and both in medium (APs 0.5, APm 2/3). The empty mask (score 0.99) is dropped.
    """
    images = [lvis_image(1, S, S)]
    anns = [gt_rect(1, 1, 1, 0, 0, 32, 32), gt_rect(2, 1, 1, 32, 32, 96, 96)]
    dets = [
        det_rect(1, 1, 0.9, 0, 0, 32, 32, S, S),
        det_rect(1, 1, 0.8, 32, 32, 96, 96, S, S),
        det_rect(1, 1, 0.95, 96, 0, 32, 32, S, S),
        empty_mask(1, 1, 0.99),
    ]
    return lvis_dataset(images, anns, CATS[:1]), without_bbox(dets)


def test_boundary_ap_area_ranges_follow_the_boundary_iou_api(tmp_path):
    data, dets = boundary_case()
    gt_path = write_json(tmp_path / "gt.json", data)
    res_path = write_json(tmp_path / "res.json", dets)
    gt = load_ground_truth(gt_path)
    with quiet_native_output():
        parsed = gt.coco.load_res(str(res_path))
    streamed = boundary_ap_streaming(gt, parsed).metrics
    images = {i["id"]: i for i in data["images"]}
    reference, _ = boundary_ap(images, gt.categories, gt_with_rles(gt.coco), dets)
    for res in (streamed, reference):
        assert res["APs"] == -1.0
        assert res["APm"] == pytest.approx(0.5)
        assert res["APl"] == pytest.approx(1.0)
        assert res["ARs@300"] == -1.0 and res["ARm@300"] == 1.0 and res["ARl@300"] == 1.0
    segm = lvis_api_metrics(gt_path, res_path, "segm")  # lvis-api's rule stays for segm
    assert segm["APs"] == pytest.approx(0.5) and segm["APm"] == pytest.approx(2 / 3, abs=1e-2)


def test_evaluate_prints_how_many_area_zero_detections_were_not_scored(tmp_path):
    _, dets = area_case()
    gt_path, res_path = _paths(tmp_path, without_bbox(dets))
    outcome = run_evaluate(
        res_path, gt=gt_path, iou_types=("segm",), extras=("boundary", "fixed"), out=tmp_path / "m.json"
    )
    assert any("8 detection(s) of area 0" in n for n in outcome.notes)
    assert outcome.metrics["segm"]["AP"] == pytest.approx(lvis_api_metrics(gt_path, res_path, "segm")["AP"])


@pytest.mark.parametrize("with_bbox", [True, False])
def test_area_zero_on_the_federated_edge_cases(tmp_path, with_bbox):
    """The edge cases of the lvis-api comparison (negative, not-exhaustive and never-verified categories,
    categories without GT, the 300 cap) plus a GT of area 0 and two area-0 detections: lvis-api's numbers
    through hotcoco and through the stream. Dropping the GT must keep the categories without GT."""
    from tests.helpers.eval_cases import edge_case_gt, edge_case_results

    gt = edge_case_gt()
    zero = gt_rect(99, 2, 1, 0, 0, 3, 3)
    zero["area"] = 0.0
    gt["annotations"].append(zero)
    dets = edge_case_results()
    dets.append({**det_rect(1, 5, 0.99, 0, 0, 0, 0), "bbox": [1.0, 1.0, 0.0, 4.0]})
    dets.append(det_rect(1, 1, 0.98, 0, 0, 0, 0))
    dets = dets if with_bbox else without_bbox(dets)
    gt_path = write_json(tmp_path / "gt.json", gt)
    res_path = write_json(tmp_path / "res.json", dets)
    ground = load_ground_truth(gt_path)
    assert 5 in ground.coco.cats and len(ground.coco.get_ann_ids()) == len(gt["annotations"]) - 1
    iou_types = ("segm", "bbox") if with_bbox else ("segm",)
    out = evaluate_lvis(load_results_for_eval(res_path, ground), ground, iou_types)
    with quiet_native_output():
        parsed = ground.coco.load_res(str(res_path))
    streamed = stream_federated(ground, parsed, [Task(t) for t in iou_types])
    for t, (res, _) in zip(iou_types, streamed, strict=True):
        ref = lvis_api_metrics(gt_path, res_path, t)
        assert {k: out[t].metrics[k] for k in METRIC_KEYS} == pytest.approx(ref, abs=1e-9), t
        assert res == pytest.approx(ref, abs=1e-12), t


def test_metric_adapters_drop_area_zero_as_lvis_api(tmp_path):
    """The mmdet / detectron2 adapters (``integrations.lvis_eval``) hand over binary masks, empty ones
    included: their segm numbers are lvis-api's on the same records."""
    import torch

    from lvisctl.integrations.lvis_eval import evaluate_records, image_records

    gt, _ = area_case()
    gt_path = write_json(tmp_path / "gt.json", gt)
    masks = torch.zeros((3, S, S), dtype=torch.bool)
    masks[1, 10:42, 10:42] = True  # exact on GT 1 (area 1024)
    masks[2, 0:4, 100:104] = True  # a small false positive
    boxes = torch.tensor([[10.0, 10, 42, 42], [10.0, 10, 42, 42], [100.0, 0, 104, 4]])
    records = image_records(1, boxes, torch.tensor([0.99, 0.9, 0.5]), [1, 1, 1], masks)  # 0: empty mask
    out = evaluate_records(records, gt_path, ("segm",))
    ref = lvis_api_metrics(gt_path, without_bbox(records), "segm")
    assert out["segm"] == pytest.approx(ref, abs=1e-9)
