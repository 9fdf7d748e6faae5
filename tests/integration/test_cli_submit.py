"""``lvisctl submit``: the test-dev file, its validation rules, --truncate, run-dir registration."""

from __future__ import annotations

import json
import zipfile

import pytest

from lvisctl.rundir import RunDir
from tests.helpers.cli import run_cli
from tests.helpers.lvis_reference import det_rect, lvis_category, lvis_image, write_json


@pytest.fixture
def image_info(tmp_path):
    info = {
        "images": [lvis_image(1), lvis_image(2, 48, 64)],
        "categories": [lvis_category(1, "f"), lvis_category(2, "c"), lvis_category(3, "r")],
    }
    return write_json(tmp_path / "image_info_test_dev.json", info)


def dets() -> list[dict]:
    return [
        det_rect(1, 1, 0.9, 0, 0, 10, 10),
        det_rect(1, 3, 0.4, 5, 5, 10, 10),
        det_rect(2, 2, 0.7, 5, 5, 10, 10, 48, 64),
    ]


def test_submit_writes_zip_and_prints_summary(tmp_path, image_info, capsys, monkeypatch):
    res = write_json(tmp_path / "res.json", dets())
    out = tmp_path / "sub" / "lvis_test_dev.zip"
    code, stdout, err = run_cli(
        ["submit", res, "--image-info", image_info, "--out", out], capsys, monkeypatch
    )
    assert code == 0, err
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["lvis_test_dev.json"]
        assert json.loads(zf.read("lvis_test_dev.json")) == dets()
    assert "images covered" in stdout and "2 / 2" in stdout
    assert "rare categories" in stdout and "frequent categories" in stdout


def test_submit_truncate_keeps_top_300_per_image(tmp_path, image_info, capsys, monkeypatch):
    many = [det_rect(1, 1, i / 1000, 0, 0, 10, 10) for i in range(305)]
    res = write_json(tmp_path / "res.json", many)
    out = tmp_path / "s.json"
    code, _, err = run_cli(["submit", res, "--image-info", image_info, "--out", out], capsys, monkeypatch)
    assert (
        code == 2
        and "more than 300 detections (image 1 has 305); pass --truncate" in err
        and not out.exists()
    )
    code, stdout, err = run_cli(
        ["submit", res, "--image-info", image_info, "--out", out, "--truncate"], capsys, monkeypatch
    )
    assert code == 0, err
    kept = json.loads(out.read_text())
    assert len(kept) == 300 and min(d["score"] for d in kept) == 0.005  # scores 0.000-0.004 dropped
    assert "dropped by --truncate" in stdout


def test_submit_run_dir_registers_submission(tmp_path, image_info, capsys, monkeypatch):
    run = RunDir(tmp_path / "run")
    pred = write_json(run.root / "predictions" / "test.json", dets())
    artifact = run.register("predictions", pred)
    code, _, err = run_cli(["submit", "--run-dir", run.root, "--image-info", image_info], capsys, monkeypatch)
    assert code == 0, err
    sub = run.latest("submission")
    assert sub.path == "submission/test_test-dev.zip" and sub.inputs[0]["path"] == artifact.path
    assert sub.meta["detections"] == 3


def _mutate(i, key, value):
    def f(d):
        d[i][key] = value
        return d

    return f


def _extra_run(d):
    d[0]["segmentation"]["counts"] += "1"  # one more run than the 64x64 image holds
    return d


BAD = {
    "image not listed": (_mutate(0, "image_id", 3), "1 image ids not in"),
    "category outside the table": (
        _mutate(0, "category_id", 1204),
        "1 category ids not in the category table",
    ),
    "score above 1": (_mutate(0, "score", 1.5), "score 1.5 outside [0, 1]"),
    "NaN score": (_mutate(0, "score", float("nan")), "score nan (must be a finite number)"),
    "box outside the image": (_mutate(2, "bbox", [50.0, 40.0, 20.0, 20.0]), "lies outside the 64x48 image"),
    "RLE longer than the image": (_extra_run, "exceed h*w=4096"),
    "RLE of another size": (
        lambda d: [d[0], dict(d[2], image_id=1)],
        "RLE size [48, 64] differs from image 1",
    ),
    "not a list": (lambda d: {"results": d}, "results must be a json list of detections"),
    "boxes only (a .bbox.json)": (
        lambda d: [{k: v for k, v in x.items() if k != "segmentation"} for x in d],
        "has no 'segmentation' fields; the LVIS server scores masks",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_submit_bad_input(tmp_path, image_info, capsys, monkeypatch, case):
    mutation, message = BAD[case]
    res = write_json(tmp_path / "res.json", mutation(dets()))
    out = tmp_path / "sub.zip"
    code, _, err = run_cli(["submit", res, "--image-info", image_info, "--out", out], capsys, monkeypatch)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_submit_warns_on_partial_coverage_and_names_archives_honestly(
    tmp_path, image_info, capsys, monkeypatch
):
    """Issue 22 item 17: results on 1 of 2 images exited 0 without a word; --out sub.tar wrote plain json."""
    res = write_json(tmp_path / "res.json", dets()[:2])  # image 1 only
    code, _, err = run_cli(
        ["submit", res, "--image-info", image_info, "--out", tmp_path / "s.json"], capsys, monkeypatch
    )
    assert code == 0 and "warning: the results cover 1 of 2 images" in err, err
    assert json.loads((tmp_path / "s.json").read_text()) == dets()[:2]
    full = write_json(tmp_path / "full_res.json", dets())
    code, _, err = run_cli(
        ["submit", full, "--image-info", image_info, "--out", tmp_path / "f.zip"], capsys, monkeypatch
    )
    assert code == 0 and "warning" not in err
    for name in ("sub.tar", "sub.tar.gz", "sub"):
        code, _, err = run_cli(
            ["submit", full, "--image-info", image_info, "--out", tmp_path / name], capsys, monkeypatch
        )
        assert code == 2 and "written as .json or as a .zip" in err, err
        assert not (tmp_path / name).exists()
