"""``lvisctl data synth|stats|validate`` end to end on a tiny generated dataset."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lvisctl.cli.app import app
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--seed", "1", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    return run


def test_synth_writes_dataset_and_registers_it(run_dir):
    run = RunDir(run_dir, create=False)
    datasets = {a.meta["split"]: a for a in run.artifacts("dataset")}
    assert sorted(datasets) == ["test_info", "train", "unlabeled", "val"]
    assert datasets["train"].path == "data/lvis_v1_train.json" and datasets["train"].meta["preset"] == "tiny"
    assert run.resolve(run.latest("dataset", split="val")) == run_dir / "data" / "lvis_v1_val.json"
    assert (run_dir / "data" / "val2017").is_dir()


def test_synth_refuses_to_overwrite_without_flag(run_dir):
    before = (run_dir / "data" / "lvis_v1_train.json").read_bytes()
    result = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--run-dir", str(run_dir)])
    assert isinstance(result.exception, LvisctlError) and "pass --overwrite" in str(result.exception)
    assert (run_dir / "data" / "lvis_v1_train.json").read_bytes() == before


def test_stats_prints_tables_saves_and_registers_plots(run_dir):
    result = runner.invoke(app, ["data", "stats", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "categories by frequency" in result.output and "mask/box area ratio" in result.output
    run = RunDir(run_dir, create=False)
    plots = {a.meta["plot"]: a for a in run.artifacts("plot")}
    assert sorted(plots) == ["category_frequency", "mask_box_ratio"]
    png = run.resolve(plots["mask_box_ratio"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots["mask_box_ratio"].inputs[0]["path"] == "data/lvis_v1_train.json"
    again = runner.invoke(app, ["data", "stats", "--run-dir", str(run_dir)])
    assert isinstance(again.exception, LvisctlError) and "--overwrite" in str(again.exception)


def test_stats_on_a_file_without_run_dir(run_dir, tmp_path):
    gt = run_dir / "data" / "lvis_v1_val.json"
    result = runner.invoke(app, ["data", "stats", "--gt", str(gt), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "lvis_v1_val_category_frequency.png",
        "lvis_v1_val_mask_box_ratio.png",
    ]


def test_validate_summary(run_dir):
    gt = run_dir / "data" / "lvis_v1_val.json"
    result = runner.invoke(app, ["data", "validate", str(gt)])
    assert result.exit_code == 0, result.output
    n_ann = len(json.loads(gt.read_text())["annotations"])
    assert ": valid" in result.output and re.search(rf"│ annotations\s+│\s+{n_ann} │", result.output)


def test_validate_without_images_says_they_were_not_checked(run_dir, tmp_path):
    """A json away from its images is not called "valid" outright; --images then fails (exit 2)."""
    gt = tmp_path / "val.json"
    gt.write_text((run_dir / "data" / "lvis_v1_val.json").read_text())
    result = runner.invoke(app, ["data", "validate", str(gt)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the table title wraps
    title = f"{gt}: annotations valid; images not checked (none found under {tmp_path})"
    assert title in text and f"{gt}: valid" not in text
    skipped = runner.invoke(app, ["data", "validate", str(gt), "--no-images"])
    assert "annotations valid; images not checked (--no-images)" in " ".join(skipped.output.split())
    strict = runner.invoke(app, ["data", "validate", str(gt), "--images"])
    assert strict.exit_code != 0 and isinstance(strict.exception, LvisctlError)
    assert "not found under image root" in str(strict.exception)


def test_validate_bad_file_exits_2_with_one_line(run_dir, tmp_path):
    raw = json.loads((run_dir / "data" / "lvis_v1_val.json").read_text())
    raw["annotations"][0]["category_id"] = 999
    raw["annotations"][1]["bbox"][2] = 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lvisctl",
            "data",
            "validate",
            str(bad),
            "--image-root",
            str(run_dir / "data"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}: 2 problems:" in lines[0] and "category_id 999" in lines[0]
