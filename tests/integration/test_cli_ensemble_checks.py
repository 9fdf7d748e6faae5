"""Issue 22 item 15: ``ensemble`` checks its options while parsing and its inputs with ``evaluate``'s
validator, before anything is fused or written."""

import json
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.eval_cases import edge_case_gt, edge_case_results
from tests.helpers.lvis_reference import write_json


@pytest.fixture
def files(tmp_path):
    gt = Path(write_json(tmp_path / "gt.json", edge_case_gt()))
    res = Path(write_json(tmp_path / "res.json", edge_case_results()))
    return tmp_path, gt, res


def _refused(tmp_path, args, message, capsys, monkeypatch):
    out = tmp_path / "fused.json"
    code, _, err = run_cli(["ensemble", *args, "--out", out], capsys, monkeypatch)
    assert code == 2 and message in err, (args, err)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("fused*")) and not (tmp_path / ".partial").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--weights", "nan,1", "every weight must be a finite number > 0"),
        ("--weights", "inf,1", "every weight must be a finite number > 0"),
        ("--weights", "0,1", "every weight must be a finite number > 0"),
        ("--iou", "-1", "--iou -1.0: must be in (0, 1]"),
        ("--iou", "1.5", "--iou 1.5: must be in (0, 1]"),
        ("--iou", "nan", "--iou nan: must be in (0, 1]"),
        ("--skip-score", "2", "--skip-score 2.0: must be in [0, 1)"),
    ],
)
def test_options_are_refused_before_any_input_is_read(files, capsys, monkeypatch, option, value, message):
    tmp_path, _, _ = files
    missing = tmp_path / "not-there.json"  # never opened: the option is refused while parsing
    _refused(tmp_path, [missing, missing, option, value], message, capsys, monkeypatch)


def _bad_score(value):
    def change(recs):
        recs[2]["score"] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_bad_score(float("nan")), "result 2 has score nan"),
        (_bad_score(float("inf")), "result 2 has score inf"),
        (_bad_score("high"), "result 2 has score 'high'"),
        (_bad_score(-0.5), "1 scores outside [0, 1] (e.g. result 2: -0.5)"),
        (_bad_score(1.5), "1 scores outside [0, 1] (e.g. result 2: 1.5)"),
        (
            lambda recs: recs[2]["segmentation"].update(counts="~~~~"),
            "segmentation is not valid compressed RLE",
        ),
    ],
    ids=["nan", "inf", "string", "negative", "above-1", "bad-rle"],
)
def test_inputs_pass_evaluates_validator(files, capsys, monkeypatch, change, message):
    tmp_path, _, res = files
    recs = json.loads(res.read_text())
    change(recs)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(recs))
    _refused(tmp_path, [res, bad], message, capsys, monkeypatch)


def test_categories_not_in_the_images_json_are_refused(files, capsys, monkeypatch):
    tmp_path, gt, res = files
    recs = json.loads(res.read_text())
    recs[2]["category_id"] = 9999
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(recs))
    _refused(
        tmp_path, [res, bad, "--images", gt], "1 category ids not in the category table", capsys, monkeypatch
    )


def test_valid_inputs_still_fuse(files, capsys, monkeypatch):
    tmp_path, gt, res = files
    out = tmp_path / "ok.json"
    code, _, err = run_cli(
        [
            "ensemble",
            res,
            res,
            "--out",
            out,
            "--images",
            gt,
            "--weights",
            "2,1",
            "--iou",
            "1",
            "--skip-score",
            "0.5",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    fused = json.loads((tmp_path / "ok.segm.json").read_text())
    assert fused and all(0 <= r["score"] <= 1 for r in fused)
