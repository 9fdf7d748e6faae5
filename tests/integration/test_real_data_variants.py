"""Issue 26, done-when: the README's real-LVIS block, every command, on an LVIS v0.5-style dataset and on a
COCO-format file converted with ``lvisctl data convert --from coco``; no data path after the first command.

Both start from the v1 layout of ``test_real_lvis_layout`` (detectron2's ``datasets/coco/*2017/``, half the
val images under ``train2017/``) and rewrite its json files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.readme import commands, real_layout, real_lvis_block

pytestmark = pytest.mark.slow

V1_TO_V05 = {
    "lvis_v1_train": ("lvis_v0.5_train", "lvis_v1_train.json", "lvis_v0.5_train.json"),
    "lvis_v1_val": ("lvis_v0.5_val", "lvis_v1_val.json", "lvis_v0.5_val.json"),
    "lvis_v1_test_dev": (
        "lvis_v0.5_test",
        "lvis_v1_image_info_test_dev.json",
        "lvis_v0.5_image_info_test.json",
    ),
}
# what the run saw afterwards: these commands too find the images through the run's data
AFTER = "lvisctl visualize --run-dir runs/r50 --max-images 2\n"


def sandbox(work: Path) -> dict[str, str]:
    """``lvisctl`` on the PATH and ``configs/`` as in a checkout; the environment to run the block in."""
    shim = work / ".venv" / "bin"
    shim.mkdir(parents=True)
    (shim / "lvisctl").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lvisctl "$@"\n')
    (shim / "lvisctl").chmod(0o755)
    (work / "configs").symlink_to(REPO / "configs")
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    env.pop("LVISCTL_DATASETS", None)  # the default, ./datasets
    return env


def run_block(work: Path, env: dict[str, str], block: str) -> subprocess.CompletedProcess:
    script = "set -euo pipefail\n" + commands(block) + AFTER
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{script}\n---\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def v05_layout(root: Path) -> None:
    """The v1 json files as LVIS v0.5 has them: ``file_name: COCO_<split>2014_<12 digits>.jpg`` and a
    ``coco_url`` of the 2014 folder; the image files stay in detectron2's 2017 folders."""
    for _, v1_name, v05_name in V1_TO_V05.values():
        data = json.loads((root / "lvis" / v1_name).read_text())
        for image in data["images"]:
            folder, file = image["coco_url"].split("/")[-2:]
            name = f"COCO_{folder.removesuffix('2017')}2014_{file}"
            image.update(
                file_name=name, coco_url=f"http://images.cocodataset.org/{name.split('_')[1]}/{name}"
            )
        (root / "lvis" / v05_name).write_text(json.dumps(data))
        (root / "lvis" / v1_name).unlink()


def v05_block() -> str:
    block = real_lvis_block()
    for v1, (v05, _, _) in V1_TO_V05.items():
        assert v1 in block
        block = block.replace(v1, v05)
    return block


def test_readme_real_lvis_block_runs_on_a_v05_layout(tmp_path):
    env = sandbox(tmp_path)
    v05_layout(real_layout(tmp_path, env))
    val = json.loads((tmp_path / "datasets" / "lvis" / "lvis_v0.5_val.json").read_text())["images"]
    assert all(im["file_name"].startswith("COCO_") and "2014/" in im["coco_url"] for im in val)
    proc = run_block(tmp_path, env, v05_block())
    # evaluate names the version
    assert "LVIS v0.5 metrics" in proc.stdout and "LVIS v1 metrics" not in proc.stdout
    assert "using the run's data: data.train=" in proc.stderr
    assert (tmp_path / "test-dev.zip").is_file()
    assert list((tmp_path / "runs" / "r50" / "visualize").rglob("*.png"))


def coco_file(lvis_json: Path, out: Path) -> None:
    """An LVIS file as COCO has it: no frequencies or federated lists, a 2017 ``file_name`` next to
    ``coco_url``; an image-info file (no annotations) keeps an empty annotation list."""
    data = json.loads(lvis_json.read_text())
    for image in data["images"]:
        image.pop("neg_category_ids", None)
        image.pop("not_exhaustive_category_ids", None)
        image["file_name"] = image["coco_url"].split("/")[-1]
    data["categories"] = [
        {"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in data["categories"]
    ]
    data.setdefault("annotations", [])
    out.write_text(json.dumps(data))


def test_readme_real_lvis_block_runs_on_converted_coco_files(tmp_path):
    env = sandbox(tmp_path)
    root = real_layout(tmp_path, env)
    coco = root / "coco" / "annotations"
    coco.mkdir()
    converted = {}
    for builtin, (_, v1_name, _) in V1_TO_V05.items():
        coco_file(root / "lvis" / v1_name, coco / v1_name.replace("lvis_v1", "instances"))
        converted[builtin] = f"datasets/converted/{builtin.removeprefix('lvis_v1_')}.json"
        cmd = [
            "lvisctl",
            "data",
            "convert",
            "--from",
            "coco",
            str(coco / v1_name.replace("lvis_v1", "instances")),
        ]
        subprocess.run([*cmd, converted[builtin]], cwd=tmp_path, env=env, check=True, capture_output=True)
    block = real_lvis_block()
    for builtin, path in converted.items():  # builtin names do not apply: the files, once
        block = block.replace(builtin, path, 1)
    train = f"data.train={converted['lvis_v1_train']}"
    block = block.replace(train, f"data.image_root=datasets/coco {train}", 1)
    assert len(re.findall(r"datasets/", block)) == 4 and "lvis_v1_" not in block
    proc = run_block(tmp_path, env, block)
    assert "using the run's data: data.train=" in proc.stderr
    assert (tmp_path / "test-dev.zip").is_file()
    assert list((tmp_path / "runs" / "r50" / "visualize").rglob("*.png"))
    remembered = json.loads((tmp_path / "runs" / "r50" / "manifest.json").read_text())["data"]
    assert remembered["image_root"] == str((root / "coco").resolve())
    assert remembered["train"] == str((tmp_path / converted["lvis_v1_train"]).resolve())
