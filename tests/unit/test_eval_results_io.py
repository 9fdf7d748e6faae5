"""Results loading/validation: the Python validator, the byte-level screen and RLE checks."""

from __future__ import annotations

import pytest

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.results_io import (
    ImageTable,
    find_bad_rles,
    load_results,
    rle_string_flags,
    validate_results,
)
from tests.helpers.lvis_reference import det_rect, rect_rle

TABLE = ImageTable(sizes={1: (64, 64), 2: (48, 64)}, cat_ids=frozenset({1, 2, 3}), path="gt.json")


def good() -> list[dict]:
    return [det_rect(1, 1, 0.9, 0, 0, 10, 10), det_rect(2, 3, 0.5, 5, 5, 10, 10, 48, 64)]


def test_valid_results_pass():
    validate_results(good(), TABLE, source="res.json")
    validate_results(good(), TABLE, source="res.json", for_submission=True)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r[0].update(image_id=99), "1 image ids not in gt.json (e.g. 99)"),
        (lambda r: r[0].update(category_id=1204), "1 category ids not in the category table (e.g. 1204)"),
        (lambda r: r[0].update(score=float("nan")), "result 0 has score nan (must be a finite number)"),
        (
            lambda r: r[1]["segmentation"].update(size=[64, 64]),
            "result 1: RLE size [64, 64] differs from image 2",
        ),
        (
            lambda r: r[0]["segmentation"].update(counts="!!"),
            "result 0: segmentation is not valid compressed RLE",
        ),
        (
            lambda r: r[0]["segmentation"].update(counts=[1, 2]),
            "result 0: segmentation must be compressed RLE",
        ),
        (lambda r: r[0].pop("bbox"), "1 of 2 results have 'bbox'"),
    ],
)
def test_each_problem_is_named(mutate, message):
    results = good()
    mutate(results)
    with pytest.raises(LvisctlError, match="^res.json: 1 problem: ") as err:
        validate_results(results, TABLE, source="res.json")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_another_split_is_recognised():
    results = [dict(d, image_id=d["image_id"] + 1000) for d in good()]
    with pytest.raises(
        LvisctlError, match="none of its 2 image ids are in gt.json .a results file for another split"
    ):
        validate_results(results, TABLE, source="res.json")


def test_problems_are_counted_and_listed_briefly():
    results = [dict(d, score=float("inf")) for d in good() * 4]
    with pytest.raises(LvisctlError) as err:
        validate_results(results, TABLE, source="res.json")
    assert str(err.value).startswith(
        "res.json: 8 problems: result 0 has score inf"
    ) and "; ... and 3 more" in str(err.value)


def test_submission_rules():
    results = good()
    results[0]["score"] = 1.2
    results[1]["bbox"] = [60.0, 5.0, 10.0, 10.0]  # x + w = 70 > 64
    with pytest.raises(LvisctlError) as err:
        validate_results(results, TABLE, source="s.json", for_submission=True)
    assert "score 1.2 outside [0, 1]" in str(err.value) and "lies outside the 64x48 image" in str(err.value)
    too_many = [det_rect(1, 1, 0.5, 0, 0, 4, 4)] * 301
    with pytest.raises(
        LvisctlError, match="1 images have more than 300 detections .image 1 has 301.; pass --truncate"
    ):
        validate_results(too_many, TABLE, source="s.json", for_submission=True)
    validate_results(too_many, TABLE, source="s.json")  # evaluation caps instead


def test_find_bad_rles_names_every_culprit():
    ok = rect_rle(2, 2, 5, 5, 16, 16)
    too_long = dict(ok, counts=ok["counts"] + "1")  # one more run than h*w holds
    garbage = dict(ok, counts="#~")
    rles = [ok, too_long, ok, ok, garbage, ok]
    bad = find_bad_rles(rles, limit=10)
    assert [i for i, _ in bad] == [1, 4]
    assert "exceed" in bad[0][1]
    assert find_bad_rles([ok] * 3) == []


def test_rle_string_flags():
    # '0'..'o' only; a string whose last character has the continuation bit (0x20 after -48) is cut off:
    # 'P' = 80 -> 32 (continued), '1' = 49 -> 1 (complete).
    flags = rle_string_flags([b"01", b"0P", b"", b"0~", b"1P1"])
    assert flags.tolist() == [False, True, False, True, False]


def test_load_results_rejects_non_lists(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"a": 1}')
    with pytest.raises(LvisctlError, match="results must be a json list of detections, got a json dict"):
        load_results(p)
    p.write_text("[{]")
    with pytest.raises(LvisctlError, match="not valid json"):
        load_results(p)
