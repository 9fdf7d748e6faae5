"""Issue 9 through the CLI, on tiny data: what a careless or unlucky user does, and the one line they get.

Items: 1 (synth --overwrite), 2 (phase lock), 3 (images under a separate root, detectron2 layout),
4 (bad RLE), 5 (16-bit images), 8 (image size differs from the json), 9 (json encoding), 10 (unreadable
images, --strict), 12 (--run-dir under a file, --out a directory), 13 (validate checks images), 15 (runs
show --verify and paths leaving the run dir), 16 (brackets are not markup).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.cli import one_line_error, run_cli
from tests.helpers.tiny_run import SIZES, make_tiny_run

REPO = Path(__file__).resolve().parents[2]
GROUP = "val_stage2_final_s48"  # the default predictions group of the tiny checkpoint on val.json


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_run(tmp_path)


# ------------------------------------------------------------------------------------------ item 1
def test_synth_overwrite_refuses_a_folder_it_did_not_write(tmp_path, capsys, monkeypatch):
    w = tmp_path / "w"
    (w / "sub").mkdir(parents=True)
    (w / "notes.txt").write_text("x")
    code, _, err = run_cli(
        ["data", "synth", "--preset", "tiny", "--no-images", "--out", w, "--overwrite"], capsys, monkeypatch
    )
    assert "not a dataset folder written by 'lvisctl data synth'" in one_line_error(code, err)
    assert (w / "notes.txt").read_text() == "x" and (w / "sub").is_dir()
    run = tmp_path / "run"
    args = ["data", "synth", "--preset", "tiny", "--no-images", "--run-dir", run]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    code, _, err = run_cli(["data", "synth", "--out", run, "--overwrite"], capsys, monkeypatch)
    one_line_error(code, err)  # a run directory is not a synth folder
    assert (run / "manifest.json").is_file()
    assert run_cli([*args, "--overwrite", "--seed", "3"], capsys, monkeypatch)[0] == 0  # its own data/


# ------------------------------------------------------------------------------------------ item 2
def test_second_tta_infer_on_the_same_output_stops_naming_the_holder(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    ready = tmp_path / "ready"
    code = textwrap.dedent(
        f"""
        import pathlib, time
        from lvisctl.rundir import RunDir
        with RunDir({str(run.root)!r}).phase_lock("predictions-{GROUP}"):
            pathlib.Path({str(ready)!r}).write_text("x")
            time.sleep(60)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        while not ready.exists():
            time.sleep(0.05)
        start = time.monotonic()
        code, _, err = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
        line = one_line_error(code, err)
        assert time.monotonic() - start < 30  # stops before inference
        assert f"is being written by pid {holder.pid} on " in line and "since" in line
        assert not run.find("predictions") and not (run.root / ".partial").exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
    assert code == 0, err  # the holder was killed: its lock is taken over


# ------------------------------------------------------------------------------------------ item 3
def _detectron2_layout(tmp_path: Path, images: Path) -> Path:
    """datasets/lvis/val.json with coco_url, images in datasets/coco/val2017/ (the README's layout)."""
    lvis_dir, coco = tmp_path / "datasets" / "lvis", tmp_path / "datasets" / "coco" / "val2017"
    lvis_dir.mkdir(parents=True)
    coco.mkdir(parents=True)
    data = json.loads(images.read_text())
    for img in data["images"]:
        name = f"{img['id']:012d}.png"
        shutil.copy(images.parent / img.pop("file_name"), coco / name)
        img["coco_url"] = f"http://images.cocodataset.org/val2017/{name}"
    out = lvis_dir / "lvis_v1_val.json"
    out.write_text(json.dumps(data))
    return out


def test_images_under_a_separate_root_via_config_keys(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    val = _detectron2_layout(tmp_path, images)
    base = ["tta-infer", "--run-dir", run.root, "--images", val]
    code, _, err = run_cli(base, capsys, monkeypatch)  # images are not next to the json
    line = one_line_error(code, err)
    assert "not found under image root" in line and "(the json's folder;" in line
    code, _, err = run_cli([*base, f"data.image_root={tmp_path / 'datasets' / 'coco'}"], capsys, monkeypatch)
    assert code == 0, err
    # data.root + a relative data.image_root, from another working directory
    monkeypatch.chdir(tmp_path / "datasets")
    args = [
        *base,
        "--out",
        run.root / "rooted.json",
        f"data.root={tmp_path / 'datasets'}",
        "data.image_root=coco",
    ]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    a = (run.root / "predictions" / "lvis_v1_val_stage2_final_s48.segm.json").read_bytes()
    assert a == (run.root / "rooted.segm.json").read_bytes()
    code, out, err = run_cli(
        ["data", "validate", val, "--image-root", tmp_path / "datasets" / "coco"], capsys, monkeypatch
    )
    assert code == 0 and "headers, end markers and sizes checked" in out, err


# ------------------------------------------------------------------------------------------ item 4
def test_validate_refuses_a_short_or_garbage_rle(tiny, capsys, monkeypatch):
    _, images = tiny
    data = json.loads(images.read_text())
    data["annotations"][0]["segmentation"] = {"size": list(SIZES[0]), "counts": [0, 100]}
    data["annotations"][1]["segmentation"]["counts"] = "not~rle"
    images.write_text(json.dumps(data))
    code, _, err = run_cli(["data", "validate", images], capsys, monkeypatch)
    line = one_line_error(code, err)
    assert (
        "2 problems" in line and "annotation 1: RLE runs cover 100 pixels, not height x width = 5120" in line
    )
    assert "annotation 2: RLE counts string is damaged" in line


# ------------------------------------------------------------------------------------------ item 5
def test_16_bit_images_give_the_predictions_of_their_8_bit_twins(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    for i in range(1, 4):
        path = images.parent / f"img{i}.png"
        gray = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(gray).save(path)  # 8-bit grayscale
        Image.fromarray(gray.astype(np.uint16) * 257).save(images.parent / f"img{i}_16.png")  # same, 16-bit
    data = json.loads(images.read_text())
    for img in data["images"]:
        img["file_name"] = img["file_name"].replace(".png", "_16.png")
    sixteen = images.parent / "val16.json"
    sixteen.write_text(json.dumps(data))
    for name, file in (("a", images), ("b", sixteen)):
        args = ["tta-infer", "--run-dir", run.root, "--images", file, "--out", run.root / f"{name}.json"]
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 0, err
    assert (run.root / "a.segm.json").read_bytes() == (run.root / "b.segm.json").read_bytes()


# ------------------------------------------------------------------------------------------ item 8
def test_tta_infer_refuses_an_image_of_another_size_than_the_json(tiny, capsys, monkeypatch):
    run, images = tiny
    data = json.loads(images.read_text())
    data["images"][1]["height"] += 1
    del data["annotations"]  # a test-dev style image-info file: only the image records say the size
    images.write_text(json.dumps(data))
    code, _, err = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
    line = one_line_error(code, err)
    assert "img2.png: image is 48x48 but the annotation file says 48x49" in line and "(image 2" in line
    assert not run.find("predictions") and not (run.root / ".partial").exists()
    assert not (run.root / "predictions").exists()


# ------------------------------------------------------------------------------------------ item 9
def test_non_utf8_json_is_one_line_in_validate_and_stats(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "latin.json"
    bad.write_bytes(b'{"images": [], "categories": [{"id": 1, "name": "caf\xe9"}]}')
    for args in (["data", "validate", bad], ["data", "stats", "--gt", bad, "--out", tmp_path / "p"]):
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert "latin.json: not UTF-8 text (byte 0xe9" in one_line_error(code, err)
    lst = tmp_path / "list.json"
    lst.write_text("[]")
    code, _, err = run_cli(["data", "validate", lst], capsys, monkeypatch)
    assert "valid json, but the top level is a list" in one_line_error(code, err)


# ------------------------------------------------------------------------------------------ item 10
def test_unreadable_images_are_skipped_and_listed_or_refused_with_strict(tiny, capsys, monkeypatch):
    run, images = tiny
    (images.parent / "img2.png").write_bytes((images.parent / "img2.png").read_bytes()[:100])  # truncated
    from lvisctl.inference.predict_job import PredictJob

    with pytest.raises(Exception, match=r"--strict: 1 unreadable image\(s\): image 2: .*img2.png"):
        PredictJob(run.root, images, strict=True).run()
    assert not run.find("predictions") and not (run.root / ".partial").exists()
    code, _, err = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
    assert code == 0, err
    assert "1 unreadable image(s): image 2: " in err and "they are skipped" in err
    segm = run.latest("predictions")
    assert list(segm.meta["skipped_images"]) == ["2"]
    assert {r["image_id"] for r in json.loads(run.resolve(segm).read_text())} == {1, 3}


# ------------------------------------------------------------------------------------------ item 12
def test_run_dir_under_a_file_and_out_a_directory(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    (tmp_path / "afile").write_text("x")
    args = ["data", "synth", "--preset", "tiny", "--no-images", "--run-dir", tmp_path / "afile" / "sub"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert "afile is a file, not a folder" in one_line_error(code, err)
    assert run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)[0] == 0
    (tmp_path / "m.json").mkdir()
    args = ["evaluate", "--run-dir", run.root, "--out", tmp_path / "m.json", "--overwrite"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert "m.json: is a directory" in one_line_error(code, err)


# ------------------------------------------------------------------------------------------ item 13
def test_validate_checks_images_by_default_when_reachable(tiny, capsys, monkeypatch):
    _, images = tiny
    folder = images.parent
    code, out, err = run_cli(["data", "validate", images], capsys, monkeypatch)
    assert code == 0 and "headers, end markers and sizes checked" in out, err
    (folder / "img1.png").write_bytes(b"")
    (folder / "img3.png").write_text("text")
    data = json.loads(images.read_text())
    data["images"][1]["width"] = 47
    data["annotations"][1]["bbox"] = [100, 100, 5, 5]  # entirely outside the 47x48 image
    images.write_text(json.dumps(data))
    code, _, err = run_cli(["data", "validate", images], capsys, monkeypatch)
    line = one_line_error(code, err)
    assert "5 problems" in line and "lies entirely outside" in line and "empty file" in line
    assert "not an image file" in line and "annotation file says 47x48" in line
    code, out, err = run_cli(["data", "validate", images, "--no-images"], capsys, monkeypatch)
    assert "lies entirely outside" in one_line_error(code, err)  # the json's own checks stay on
    # images not reachable at all: the json is validated and the summary says images were not checked
    data["annotations"][1]["bbox"] = [10, 10, 20, 20]
    data["images"][1]["width"] = 48
    elsewhere = folder.parent / "elsewhere.json"
    elsewhere.write_text(json.dumps(data))
    code, out, err = run_cli(["data", "validate", elsewhere], capsys, monkeypatch)
    assert code == 0 and "not checked (none found under" in out, err


# ------------------------------------------------------------------------------------------ item 15
def test_runs_show_verify_refuses_paths_leaving_the_run_dir(tiny, tmp_path, capsys, monkeypatch):
    run, _ = tiny
    (tmp_path / "secret").write_text("s")
    data = json.loads(run.manifest_path.read_text())
    data["artifacts"][0]["path"] = "../secret"
    run.manifest_path.write_text(json.dumps(data))
    code, out, err = run_cli(["runs", "show", run.root, "--verify"], capsys, monkeypatch)
    assert "refused: path leaves the run dir" in out.replace("\n", " ") or "refused" in out
    assert code == 2 and "1 artifact(s) changed or missing" in err


# ------------------------------------------------------------------------------------------ item 16
def test_brackets_in_file_names_are_printed_as_they_are(tiny, capsys, monkeypatch):
    _, images = tiny
    named = images.parent / "res[val].json"
    shutil.copy(images, named)
    code, out, err = run_cli(["data", "validate", named], capsys, monkeypatch)
    assert code == 0, err
    flat = "".join(out.split())  # the title may wrap at any character
    assert "res[val].json:valid" in flat and "res.json" not in flat


def test_tta_infer_killed_between_writing_and_recording_reruns(tiny, capsys, monkeypatch):
    """Found by benchmarks/fault_injection.py: a kill after the results files were written but before
    the manifest recorded them made every rerun refuse with 'already exists'."""
    from lvisctl.inference import predict_job

    run, images = tiny
    real_register = predict_job._register_predictions

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for SIGKILL at this point

    monkeypatch.setattr(predict_job, "_register_predictions", killed)
    code, _, _ = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
    assert code == 130 and (run.root / "predictions" / f"{GROUP}.segm.json").exists()
    assert not run.find("predictions")
    monkeypatch.setattr(predict_job, "_register_predictions", real_register)
    code, _, err = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
    assert code == 0, err
    assert run.latest("predictions").path == f"predictions/{GROUP}.segm.json"
    assert not (run.root / ".partial").exists()
    code, _, err = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
    assert "already exists" in one_line_error(code, err)  # a recorded result is still protected
