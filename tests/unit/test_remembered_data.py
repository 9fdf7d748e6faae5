"""Issue 26 item 1: a run remembers its data; builtin dataset names as detectron2's; data register."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lvisctl.cli.app import app
from lvisctl.config import load_config
from lvisctl.data.builtin import BUILTIN, builtin_json
from lvisctl.data.lvis import configured_path, resolve_image_root
from lvisctl.data.remembered import fill_data, inference_inputs, remember_data
from lvisctl.data.train_data import resolve_train_annotations
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir


@pytest.fixture
def layout(tmp_path, monkeypatch) -> Path:
    """detectron2's datasets/ folder (empty jsons are enough here: nothing is parsed)."""
    root = tmp_path / "datasets"
    for rel in ("lvis/lvis_v1_train.json", "lvis/lvis_v1_val.json", "lvis/lvis_v1_image_info_test_dev.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}")
    (root / "coco" / "train2017").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LVISCTL_DATASETS", raising=False)
    return root


def test_builtin_names_are_detectron2s():
    # detectron2/data/datasets/builtin.py, _PREDEFINED_SPLITS_LVIS / _PREDEFINED_SPLITS_COCO
    assert BUILTIN["lvis_v1_test_dev"] == ("coco/", "lvis/lvis_v1_image_info_test_dev.json")
    assert BUILTIN["lvis_v0.5_test"] == ("coco/", "lvis/lvis_v0.5_image_info_test.json")
    assert BUILTIN["coco_2017_val"] == ("coco/val2017", "coco/annotations/instances_val2017.json")


def test_a_builtin_name_is_a_json_and_an_image_root(layout, monkeypatch):
    data = {"train": "lvis_v1_train", "image_root": ""}
    assert configured_path(data, "train") == Path("datasets/lvis/lvis_v1_train.json")
    root = resolve_image_root(data)
    assert root.path == Path("datasets/coco") and root.source == "data.train=lvis_v1_train"
    monkeypatch.setenv("LVISCTL_DATASETS", "/data/sets")
    assert builtin_json("lvis_v1_val") == Path("/data/sets/lvis/lvis_v1_val.json")


def test_the_first_command_records_and_later_ones_use_it(layout, tmp_path):
    run = tmp_path / "run"
    said: list[str] = []
    cfg = load_config(None, ["data.train=lvis_v1_train", "data.val=lvis_v1_val"])
    from lvisctl.data.remembered import given_data

    remember_data(run, given_data(cfg.data), said.append)
    known = RunDir(run).datasets()
    assert known == {
        "train": str((layout / "lvis/lvis_v1_train.json").resolve()),
        "val": str((layout / "lvis/lvis_v1_val.json").resolve()),
        "image_root": str((layout / "coco").resolve()),
    }
    # a later command: its empty keys come from the run, and it says so
    later = fill_data(run, load_config(None, []), said.append)
    assert later.data.train == known["train"] and later.data.image_root == known["image_root"]
    assert said[-1].startswith("using the run's data: data.train=")
    assert resolve_train_annotations(later, RunDir(run)) == Path(known["train"])
    # what a command is given wins; the record is kept
    given = fill_data(run, load_config(None, ["data.val=other.json"]), said.append)
    assert given.data.val == "other.json"
    remember_data(run, {"val": "/elsewhere.json"}, said.append)
    assert RunDir(run).datasets()["val"] == known["val"]


def test_tta_infer_defaults_to_the_runs_val_and_image_root(layout, tmp_path):
    run = tmp_path / "run"
    RunDir(run).remember_datasets(
        {"val": "/x/val.json", "test_info": "/x/test.json", "image_root": "/x/coco"}
    )
    said: list[str] = []
    assert inference_inputs(run, None, None, said.append) == (Path("/x/val.json"), Path("/x/coco"))
    assert inference_inputs(run, "test", None, said.append)[0] == Path("/x/test.json")
    assert any("data.val=/x/val.json" in s for s in said)
    with pytest.raises(LvisctlError, match="remembers no data.test_info"):
        inference_inputs(tmp_path / "empty", "test", None, said.append)


def test_no_training_data_hint_does_not_send_to_synth(tmp_path):
    with pytest.raises(LvisctlError) as err:
        resolve_train_annotations(load_config(None, []), RunDir(tmp_path / "run"))
    assert "data synth" not in str(err.value) and "data register" in str(err.value)


def test_data_register_records_checks_and_keeps(layout, tmp_path):
    run = tmp_path / "run"
    cli = CliRunner()
    res = cli.invoke(app, ["data", "register", "--run-dir", str(run), "--train", "lvis_v1_train"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["train"].endswith("lvis/lvis_v1_train.json")
    assert manifest["data"]["image_root"].endswith("datasets/coco")
    # a missing file: one line, exit 2, nothing recorded
    proc = subprocess.run(
        [sys.executable, "-m", "lvisctl", "data", "register", "--run-dir", str(run), "--val", "nope.json"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "error: nope.json: no such file (data.val)"
    assert "val" not in RunDir(run).datasets()
    # a second, different file is kept out unless --replace
    args = ["data", "register", "--run-dir", str(run), "--train", "datasets/lvis/lvis_v1_val.json"]
    res = cli.invoke(app, args)
    assert "pass --replace to change it" in res.output
    res = cli.invoke(app, [*args, "--replace"])
    assert RunDir(run).datasets()["train"].endswith("lvis_v1_val.json")


def test_tta_infer_takes_a_builtin_name_with_its_image_root(layout, tmp_path):
    said: list[str] = []
    images, root = inference_inputs(tmp_path / "run", "lvis_v1_val", None, said.append)
    assert images == Path("datasets/lvis/lvis_v1_val.json") and root == Path("datasets/coco")
    # a file of that name in the working directory wins over the builtin name
    (tmp_path / "lvis_v1_val").write_text("{}")
    assert inference_inputs(tmp_path / "run", "lvis_v1_val", None, said.append)[0] == Path("lvis_v1_val")
