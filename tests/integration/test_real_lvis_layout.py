"""Issue 26, done-when: README's real-LVIS block runs literally, every command, on a tiny dataset laid out
as the real LVIS v1 is in detectron2's ``datasets/`` (``coco_url`` and no ``file_name``; half of the val
images live under ``train2017/``, as LVIS v1 val takes images from COCO train2017), and no data path appears
after the block's first command: the run remembers its data."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.readme import commands, real_layout, real_lvis_block

pytestmark = pytest.mark.slow


def test_the_layout_moves_half_the_val_images_to_train2017(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    root = real_layout(tmp_path, env)
    val = json.loads((root / "lvis" / "lvis_v1_val.json").read_text())["images"]
    folders = [im["coco_url"].split("/")[-2] for im in val]
    assert folders.count("train2017") == (len(val) + 1) // 2 and "val2017" in folders
    assert all((root / "coco" / "/".join(im["coco_url"].split("/")[-2:])).is_file() for im in val)


def test_no_data_path_repeats_after_the_first_command():
    lines = re.sub(r"\\\n\s*", " ", real_lvis_block()).strip().splitlines()
    later = " ".join(lines[1:])
    assert not re.search(r"datasets/|\.json\b|data\.\w+=|--image-root|--image-info|lvis_v1_", later), later


def test_readme_real_lvis_block_runs_on_the_real_layout(tmp_path):
    work = tmp_path
    shim = work / ".venv" / "bin"
    shim.mkdir(parents=True)
    (shim / "lvisctl").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lvisctl "$@"\n')
    (shim / "lvisctl").chmod(0o755)
    (work / "configs").symlink_to(REPO / "configs")
    import os

    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    env.pop("LVISCTL_DATASETS", None)  # the default, ./datasets
    real_layout(work, env)
    # then the commands that looked at the run: they too find the images through the run's data
    after = (
        "lvisctl visualize --run-dir runs/r50 --max-images 2\n"
        "lvisctl analyze masks --run-dir runs/r50 --max-images 2 --scale 64\n"
    )
    script = "set -euo pipefail\n" + commands(real_lvis_block()) + after
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, f"{script}\n---\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # every later command said where its data came from
    assert "using the run's data: data.train=" in proc.stderr
    assert proc.stderr.count("using the run's data.image_root=") >= 4  # tta-infer x2, visualize, analyze
    assert "using the run's data.test_info=" in proc.stderr
    assert (work / "test-dev.zip").is_file()
    assert "drew " in proc.stdout and list((work / "runs" / "r50" / "visualize").rglob("*.png"))
    remembered = json.loads((work / "runs" / "r50" / "manifest.json").read_text())["data"]
    assert remembered["image_root"] == str((work / "datasets" / "coco").resolve())
    assert set(remembered) == {"train", "val", "test_info", "image_root"}
