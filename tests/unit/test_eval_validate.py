"""``validate(results, gt)``: every class of malformed record refused with one line, on both of its
routes (a parsed list: the exact check; a file being evaluated: the screen beside hotcoco, then the exact
check), and the server's extra rules for submissions."""

from __future__ import annotations

import json

import pytest

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.lvis_metrics import evaluate_lvis, load_ground_truth, load_results_for_eval
from lvisctl.evaluation.validate import validate
from tests.helpers.eval_cases import edge_case_gt, edge_case_results
from tests.helpers.lvis_reference import without_bbox, write_json


def dets() -> list[dict]:
    return edge_case_results()[:14]


def mutated(fn, bbox: bool = True):
    d = dets() if bbox else without_bbox(dets())
    out = fn(d)
    return d if out is None else out


def _extra_run(d):
    d[2]["segmentation"]["counts"] += "1"  # one more run than the 64x64 image holds


CASES = {
    "not a list": (lambda d: {"annotations": d}, "results must be a json list of detections"),
    "not an object": (lambda d: [*d[:3], 5, *d[4:]], "result 3 is a json int, not an object"),
    "unknown image id": (lambda d: d[2].update(image_id=77), "1 image ids not in"),
    "another split": (lambda d: [dict(x, image_id=x["image_id"] + 500) for x in d], "for another split"),
    "unknown category id": (
        lambda d: d[2].update(category_id=9999),
        "1 category ids not in the category table",
    ),
    "score not a number": (lambda d: d[2].update(score="high"), "result 2 has score 'high'"),
    "bbox not 4 numbers": (lambda d: d[2].update(bbox=[1, 2, 3]), "result 2: bbox must be [x, y, w, h]"),
    "bbox negative side": (lambda d: d[2].update(bbox=[1, 2, -3, 4]), "has a negative width or height"),
    "bbox on some only": (lambda d: d[:3] + without_bbox(d[3:]), "3 of 14 results have 'bbox'"),
    "segmentation on some only": (
        lambda d: d[2].pop("segmentation") and None,
        "13 of 14 results have 'segmentation'",
    ),
    "segmentation not RLE": (
        lambda d: d[2].update(segmentation=[[0, 0, 5, 0, 5, 5]]),
        "result 2: segmentation must be compressed RLE",
    ),
    "RLE size differs": (lambda d: d[2]["segmentation"].update(size=[32, 32]), "RLE size [32, 32] differs"),
    "RLE foreign characters": (
        lambda d: d[2]["segmentation"].update(counts="~~~~"),
        "result 2: segmentation is not valid compressed RLE",
    ),
    "RLE cut mid-number": (
        lambda d: d[2]["segmentation"].update(counts="0" + "R" * 40),
        "result 2: segmentation is not valid compressed RLE",
    ),
    "RLE runs beyond h*w": (_extra_run, "result 2: segmentation is not valid compressed RLE"),
    # issue 22 item 16: both sides negative (w * h > 0 hid it), runs covering 2 of 4096 pixels
    "bbox two negative sides": (
        lambda d: d[2].update(bbox=[10, 20, -3, -4]),
        "has a negative width or height",
    ),
    "string image id": (
        lambda d: d[2].update(image_id="1"),
        "1 image ids not in",
    ),
    "no score": (lambda d: d[2].pop("score") and None, "result 2 has score None"),
    "RLE runs short of h*w": (
        lambda d: d[2]["segmentation"].update(counts="11"),
        "result 2: segmentation runs cover 2 of the 64x64 = 4096 pixels",
    ),
}


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    return load_ground_truth(write_json(tmp_path_factory.mktemp("gt") / "gt.json", edge_case_gt()))


@pytest.mark.parametrize("case", list(CASES))
def test_a_parsed_list_is_refused_with_one_line(gt, case):
    fn, message = CASES[case]
    with pytest.raises(LvisctlError) as err:
        validate(mutated(fn), gt, source="res.json")
    assert str(err.value).startswith("res.json: ") and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bbox", [True, False], ids=["with bbox", "without bbox"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_file_being_evaluated_is_refused_with_one_line(gt, tmp_path, case, bbox):
    # Both kinds of file: with boxes the screen decodes every RLE; without (tta-infer's .segm.json) hotcoco
    # decodes them for mask areas and the screen checks what hotcoco's decoder does not (characters).
    if case == "bbox on some only" and not bbox:
        pytest.skip("the mutation strips boxes: without bbox it is the clean file")
    fn, message = CASES[case]
    results = mutated(fn, bbox)
    path = write_json(tmp_path / "res.json", results)
    with pytest.raises(LvisctlError) as err:
        loaded = load_results_for_eval(path, gt)
        evaluate_lvis(loaded, gt, ("segm", "bbox") if "bbox" in json.dumps(results)[:400] else ("segm",))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_good_file_passes_on_both_routes(gt, tmp_path):
    validate(dets(), gt)
    path = write_json(tmp_path / "res.json", dets())
    validate(path, gt)  # no screen given: parsed and checked exactly
    loaded = load_results_for_eval(path, gt)
    evaluate_lvis(loaded, gt)
    assert loaded.verified


SUBMISSION = {
    "score above 1": (lambda d: d[2].update(score=1.5), "result 2 has score 1.5 outside [0, 1]"),
    "box outside the image": (
        lambda d: d[2].update(bbox=[60.0, 0.0, 20.0, 10.0]),
        "lies outside the 64x64 image",
    ),
    "more than 300 per image": (lambda d: d + [dict(d[0]) for _ in range(301)], "more than 300 detections"),
    "no masks": (
        lambda d: without_bbox(d) and [{k: v for k, v in x.items() if k != "segmentation"} for x in d],
        "has no 'segmentation' fields",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(SUBMISSION))
def test_submission_rules(gt, case):
    fn, message = SUBMISSION[case]
    results = mutated(fn)
    validate(results, gt)  # fine for evaluation ...
    with pytest.raises(LvisctlError) as err:  # ... not for the server
        validate(results, gt, source="sub.json", for_submission=True)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_string_image_id_is_shown_quoted(gt):
    """Issue 22 item 24: a string id "49" was reported as 'not in GT (e.g. 49)'."""
    d = dets()
    d[2]["image_id"] = "49"
    with pytest.raises(LvisctlError) as err:
        validate(d, gt, source="res.json")
    assert '(e.g. "49"); ids must be json integers, not strings' in str(err.value)
