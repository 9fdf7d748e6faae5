"""``fast_eval``: one strict parse on every core and compiled per-image evaluation, ``evaluate``'s usual
route. Its numbers equal lvis-api 0.5.3's and the hotcoco route's; it vouches only for files the exact
validator accepts (everything else goes to the hotcoco route, which names the problem); the parallel
read equals the sequential one, also where a cut falls inside a string."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from lvisctl.errors import LvisctlError
from lvisctl.evaluation import results_parse
from lvisctl.evaluation.fast_eval import fast_evaluate
from lvisctl.evaluation.lvis_metrics import (
    METRIC_KEYS,
    evaluate_lvis,
    load_ground_truth,
    load_results_for_eval,
)
from lvisctl.evaluation.pipeline import run_evaluate
from tests.helpers.eval_cases import CASES, CATS, edge_case_gt, edge_case_results, mutated, random_case
from tests.helpers.lvis_reference import (
    det_rect,
    gt_rect,
    lvis_api_metrics,
    lvis_dataset,
    lvis_image,
    without_bbox,
    write_json,
)


def _both_routes(tmp_path, gt: dict, results, iou_types=("segm", "bbox"), raw: str | None = None):
    gt_path = write_json(tmp_path / "gt.json", gt)
    res_path = tmp_path / "res.json"
    res_path.write_text(raw if raw is not None else json.dumps(results))
    ground = load_ground_truth(gt_path)
    fast = fast_evaluate(res_path, ground, iou_types)
    assert fast is not None, "the strict reader should vouch for this file"
    old = evaluate_lvis(load_results_for_eval(res_path, ground), ground, iou_types)
    return gt_path, res_path, fast, old


def _assert_equal(gt_path, res_path, fast, old, iou_types=("segm", "bbox"), reference: bool = True) -> None:
    for t in iou_types:
        summary, per_cat = fast.metrics[t]
        ref = lvis_api_metrics(gt_path, str(res_path), t) if reference else None
        for key in METRIC_KEYS:
            assert summary[key] == pytest.approx(old[t].metrics[key], abs=1e-12), (t, key)
            if ref is not None:
                assert summary[key] == pytest.approx(ref[key], abs=1e-12), (t, key)
        for cat, ap in old[t].per_category_ap.items():
            assert (math.isnan(ap) and math.isnan(per_cat[cat])) or per_cat[cat] == pytest.approx(
                ap, abs=1e-12
            )


@pytest.mark.parametrize("with_bbox", [True, False])
def test_edge_cases_equal_lvis_api_and_the_hotcoco_route(tmp_path, with_bbox):
    results = edge_case_results() if with_bbox else without_bbox(edge_case_results())
    types = ("segm", "bbox") if with_bbox else ("segm",)  # boxes from masks: the hotcoco route
    _assert_equal(*_both_routes(tmp_path, edge_case_gt(), results, types), iou_types=types)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_cases_equal_lvis_api(tmp_path, seed):
    gt, dets = random_case(seed, num_images=40)
    _assert_equal(*_both_routes(tmp_path, gt, dets))
    segm_only = without_bbox(copy.deepcopy(dets))
    _assert_equal(*_both_routes(tmp_path, gt, segm_only, ("segm",)), iou_types=("segm",))


def test_layout_variants_are_read_exactly(tmp_path):
    """Pretty-printed json, other key orders, fields the evaluator does not read, 17-digit and exponent
    scores: all vouched for, with the same numbers as the hotcoco route."""
    gt, dets = random_case(5, num_images=20)
    for k, d in enumerate(dets):
        d["score"] = [0.1 + 0.2, 1e-05 * (k + 1), 0.8765432238578796, 3e-1, 12345678901234567e-17][k % 5]
        d["extra"] = [None, True, False, "a },{ b \\" + '"', -0.0][k % 5]
        if k % 2:
            dets[k] = dict(reversed(list(d.items())))
    raw = json.dumps(dets, indent=2)
    _assert_equal(*_both_routes(tmp_path, gt, dets, raw=raw), reference=False)


def test_empty_image_and_ties_and_cap(tmp_path):
    gt = lvis_dataset(
        [lvis_image(1, neg=[2]), lvis_image(2), lvis_image(3)],
        [gt_rect(1, 1, 1, 10, 10, 20, 20), gt_rect(2, 3, 1, 5, 5, 30, 30)],
        CATS[:2],
    )
    dets = [det_rect(1, 1, 0.5, 10 + i % 4, 10, 20, 20) for i in range(320)]
    dets += [det_rect(1, 2, 0.5, 0, 0, 10, 10), det_rect(3, 1, 0.9, 5, 5, 30, 29)]
    _assert_equal(*_both_routes(tmp_path, gt, dets))


@pytest.mark.parametrize(
    "bbox, types",
    [(True, ("segm", "bbox")), (True, ("bbox",)), (False, ("segm",))],
    ids=["with bbox", "box AP only", "without bbox"],
)
@pytest.mark.parametrize("case", list(CASES))
def test_malformed_files_are_not_vouched_for_and_refused_with_one_line(tmp_path, case, bbox, types):
    # "box AP only": a box evaluation reads no mask, yet a damaged RLE is refused as in the others
    from tests.helpers.eval_cases import edge_case_gt as gt_of

    if case == "bbox on some only" and not bbox:
        pytest.skip("the mutation strips boxes: without bbox it is the clean file")
    fn, message = CASES[case]
    results = mutated(fn, bbox)
    gt_path = write_json(tmp_path / "gt.json", gt_of())
    path = write_json(tmp_path / "res.json", results)
    assert fast_evaluate(path, load_ground_truth(gt_path), types) is None
    with pytest.raises(LvisctlError) as err:
        run_evaluate(path, gt=gt_path, iou_types=types)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


GOOD = (
    '{"image_id":1,"category_id":1,"score":0.5,"bbox":[1,2,3,4],"segmentation":{"size":[64,64],"counts":%s}}'
)
BAD_JSON = {
    "trailing comma": lambda g: f"[{g},]",
    "missing comma": lambda g: f"[{g}{g}]",
    "leading zero": lambda g: "[" + g.replace('"score":0.5', '"score":00.5') + "]",
    "NaN": lambda g: "[" + g.replace('"score":0.5', '"score":NaN') + "]",
    "huge exponent": lambda g: "[" + g.replace('"score":0.5', '"score":1e999') + "]",
    "repeated key": lambda g: "[" + g.replace('"score":0.5', '"score":0.5,"score":0.6') + "]",
    "text after the list": lambda g: f"[{g}] x",
    "raw control character": lambda g: "[" + g.replace('"score":0.5', '"score":0.5,"note":"a\tb"') + "]",
    "nested field": lambda g: "[" + g.replace('"score":0.5', '"extra":{"a":1},"score":0.5') + "]",
    "float id": lambda g: "[" + g.replace('"image_id":1', '"image_id":1.0') + "]",
    "empty list": lambda g: "[]",
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_strict_reader_refuses_what_it_cannot_vouch_for(tmp_path, case):
    gt = lvis_dataset([lvis_image(1)], [gt_rect(1, 1, 1, 10, 10, 20, 20)], CATS[:1])
    ground = load_ground_truth(write_json(tmp_path / "gt.json", gt))
    good = GOOD % json.dumps(det_rect(1, 1, 0.5, 10, 10, 20, 20)["segmentation"]["counts"])
    path = tmp_path / "res.json"
    path.write_text(BAD_JSON[case](good))
    assert fast_evaluate(path, ground, ("segm",)) is None
    path.write_text(f"[{good}]")
    assert fast_evaluate(path, ground, ("segm", "bbox")) is not None


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_parallel_read_equals_sequential_read(tmp_path, monkeypatch, parts):
    gt, dets = random_case(9, num_images=30)
    for k, d in enumerate(dets):  # cuts may fall on a "},{" inside a string: read again in one piece
        d["note"] = "},{" * (k % 3)
    path = write_json(tmp_path / "res.json", dets)
    one = results_parse.parse_results(path)
    monkeypatch.setattr(results_parse, "PARALLEL_ABOVE_BYTES", 0)
    monkeypatch.setattr(results_parse, "worker_count", lambda: parts)
    many = results_parse.parse_results(path)
    assert one is not None and many is not None
    assert np.array_equal(one.ints, many.ints) and np.array_equal(one.flt, many.flt)
    assert len(one.ints) == len(dets)
    assert one.flt[:, 0].tolist() == [d["score"] for d in dets]
