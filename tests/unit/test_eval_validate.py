"""``validate(results, gt)``: every class of malformed record refused with one line, on both of its
routes (a parsed list: the exact check; a file being evaluated: the screen beside hotcoco, then the exact
check), and the server's extra rules for submissions."""

from __future__ import annotations

import json

import pytest

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.lvis_metrics import evaluate_lvis, load_ground_truth, load_results_for_eval
from lvisctl.evaluation.validate import validate
from tests.helpers.eval_cases import CASES, dets, edge_case_gt, mutated
from tests.helpers.lvis_reference import without_bbox, write_json


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
