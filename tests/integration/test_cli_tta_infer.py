"""``lvisctl tta-infer`` end to end on a tiny LVIS file, with the real model and real checkpoints."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvisctl.errors import LvisctlError
from lvisctl.inference.results import is_empty_mask
from tests.helpers.cli import invoke as cli_invoke
from tests.helpers.tiny_run import CAT_IDS, SIZES

REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return cli_invoke("tta-infer", *args)


def test_writes_segm_and_bbox_files_and_registers_them(setup):
    run, images, stage2 = setup
    result = invoke("--run-dir", run.root, "--images", images, "inference.detections_per_image=7")
    assert result.exit_code == 0, result.output
    meta = {"gt": str(images.resolve()), "scales": [48], "checkpoint": "checkpoints/stage2_final.pt"}
    segm_art = run.latest("predictions")  # the segm file is registered last: the newest predictions
    assert segm_art.path == "predictions/val_stage2_final_s48.segm.json"
    assert segm_art.meta == {"iou_type": "segm", "group": "val_stage2_final_s48", **meta}
    bbox_art = run.latest("predictions", iou_type="bbox")
    assert bbox_art.path == "predictions/val_stage2_final_s48.bbox.json"
    assert bbox_art.meta == {"iou_type": "bbox", "group": "val_stage2_final_s48", **meta}
    for art in (segm_art, bbox_art):
        assert [i["path"] for i in art.inputs] == ["checkpoints/stage2_final.pt", str(images.resolve())]
        assert art.config["inference"]["detections_per_image"] == 7
    segm = json.loads(run.resolve(segm_art).read_text())
    bbox = json.loads(run.resolve(bbox_art).read_text())
    assert all("bbox" not in r for r in segm) and all("segmentation" not in r for r in bbox)
    assert [(r["image_id"], r["category_id"], r["score"]) for r in segm] == [
        (r["image_id"], r["category_id"], r["score"]) for r in bbox
    ]
    assert {r["image_id"] for r in segm} == {1, 2, 3}
    assert all(sum(r["image_id"] == i for r in segm) == 7 for i in (1, 2, 3))  # top-7 cap
    assert {r["category_id"] for r in segm} <= set(CAT_IDS)
    for r in segm:
        assert r["segmentation"]["size"] == list(SIZES[r["image_id"] - 1])  # original resolution
    for r in bbox:
        h, w = SIZES[r["image_id"] - 1]
        x, y, bw, bh = r["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w + 0.01 and y + bh <= h + 0.01
    scores = [r["score"] for r in segm if r["image_id"] == 1]
    assert scores == sorted(scores, reverse=True)
    assert "tta-infer" in result.output and "predictions:" in result.output
    assert not (run.root / ".partial").exists()


def test_run_dir_evaluate_and_submit_use_the_split_files(setup, capsys, monkeypatch):
    """evaluate --run-dir: segm on the segm file (mask areas, no note), bbox on the same run's bbox file;
    each equal to lvis-api on that file. submit --run-dir takes the segm file."""
    from tests.helpers.cli import run_cli
    from tests.helpers.lvis_reference import lvis_api_metrics

    run, images, _ = setup
    assert invoke("--run-dir", run.root, "--images", images).exit_code == 0
    # A newer bbox file of another group must not be paired with this run's segm file.
    other = run.root / "predictions" / "other.bbox.json"
    other.write_text("[]")
    run.register("predictions", other, meta={"iou_type": "bbox", "group": "other", "gt": str(images)})
    code, out, err = run_cli(["evaluate", "--run-dir", run.root], capsys, monkeypatch)
    assert code == 0, err
    assert "note: the results have 'bbox'" not in out
    metrics = json.loads((run.root / "metrics" / "val_stage2_final_s48_metrics.json").read_text())
    segm_file = run.root / "predictions" / "val_stage2_final_s48.segm.json"
    bbox_file = run.root / "predictions" / "val_stage2_final_s48.bbox.json"
    assert metrics["segm"] == pytest.approx(lvis_api_metrics(images, segm_file, "segm"), abs=1e-9)
    assert metrics["bbox"] == pytest.approx(lvis_api_metrics(images, bbox_file, "bbox"), abs=1e-9)
    inputs = [i["path"] for i in run.latest("metrics").inputs]
    assert inputs == [
        "predictions/val_stage2_final_s48.segm.json",
        "predictions/val_stage2_final_s48.bbox.json",
        str(images.resolve()),
    ]
    code, _, err = run_cli(["submit", "--run-dir", run.root, "--image-info", images], capsys, monkeypatch)
    assert code == 0, err
    sub = run.latest("submission")
    assert sub.path == "submission/val_stage2_final_s48_test-dev.zip"
    assert sub.inputs[0]["path"] == "predictions/val_stage2_final_s48.segm.json"


def test_results_load_in_lvis_api(setup):
    run, images, _ = setup
    assert invoke("--run-dir", run.root, "--images", images, "--out", run.root / "p.json").exit_code == 0
    from tests.helpers.lvis_reference import lvis_api_metrics

    for iou_type in ("bbox", "segm"):
        metrics = lvis_api_metrics(images, run.root / f"p.{iou_type}.json", iou_type)
        assert all(-1 <= v <= 1 for v in metrics.values()) and "APr" in metrics


def test_explicit_checkpoint_and_scales(setup, tmp_path):
    run, images, _ = setup
    stage1 = run.root / "checkpoints" / "stage1_final.pt"
    out = tmp_path / "elsewhere" / "s1.json"
    result = invoke(
        "--run-dir",
        run.root,
        "--images",
        images,
        "--checkpoint",
        stage1,
        "--scales",
        "40,56",
        "--out",
        out,
        "inference.detections_per_image=5",
    )
    assert result.exit_code == 0, result.output
    # outside the run dir: written, not recorded (a manifest names only files inside its run, issue 22)
    assert not run.find("predictions") and "(scales [40, 56], checkpoint checkpoints/stage1_final.pt" in (
        " ".join(result.output.split())
    )
    segm = json.loads(out.with_name("s1.segm.json").read_text())
    bbox = json.loads(out.with_name("s1.bbox.json").read_text())
    # at most 5 per image, in both files; never an empty mask (the untrained model makes some: said so)
    per_image = [sum(d["image_id"] == i for d in segm) for i in {d["image_id"] for d in segm}]
    assert 0 < len(segm) == len(bbox) <= 15 and max(per_image) <= 5
    assert not any(is_empty_mask(d["segmentation"]) for d in segm)
    assert (len(segm) == 15) or "detections with an empty mask left out" in result.output


def test_interrupted_run_resumes_to_identical_file(setup):
    run, images, _ = setup
    args = ["--run-dir", run.root, "--images", images, "inference.chunk_size=1"]
    assert invoke(*args, "--out", run.root / "full.json").exit_code == 0

    first = invoke(*args, "--out", run.root / "resumed.json", "--max-chunks", "1")
    assert first.exit_code == 75, first.output
    assert not list(run.root.glob("resumed*.json"))
    assert sorted(p.name for p in (run.root / ".partial" / "resumed").iterdir()) == [
        "meta.json",
        "rank0_0.json",
    ]
    assert len(run.find("predictions")) == 2  # full.{segm,bbox}.json; nothing for the unfinished run
    second = invoke(*args, "--out", run.root / "resumed.json")
    assert second.exit_code == 0, second.output
    for t in ("segm", "bbox"):
        assert (run.root / f"resumed.{t}.json").read_bytes() == (run.root / f"full.{t}.json").read_bytes()
    assert not (run.root / ".partial").exists()


def test_refuses_to_overwrite_and_reports_user_errors(setup, tmp_path):
    run, images, _ = setup
    assert invoke("--run-dir", run.root, "--images", images).exit_code == 0
    again = invoke("--run-dir", run.root, "--images", images)
    assert isinstance(again.exception, LvisctlError) and "already exists" in str(again.exception)
    assert invoke("--run-dir", run.root, "--images", images, "--overwrite").exit_code == 0

    bad = invoke("--run-dir", run.root, "--images", images, "--scales", "8OO")
    assert isinstance(bad.exception, LvisctlError) and "--scales" in str(bad.exception)

    absent = invoke("--run-dir", tmp_path / "fresh", "--images", images)
    assert isinstance(absent.exception, LvisctlError) and "does not exist" in str(absent.exception)
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "empty").mkdir()  # a run directory that holds no checkpoint
    empty = invoke("--run-dir", tmp_path / "empty", "--images", images)
    assert isinstance(empty.exception, LvisctlError) and "no final checkpoint" in str(empty.exception)

    (images.parent / "img2.png").unlink()
    missing = invoke("--run-dir", run.root, "--images", images, "--out", tmp_path / "x.json")
    assert isinstance(missing.exception, LvisctlError) and "img2.png not found" in str(missing.exception)
    assert not list(tmp_path.glob("x*.json"))


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one_process(setup):
    run, images, _ = setup
    single = invoke(
        "--run-dir",
        run.root,
        "--images",
        images,
        "--out",
        run.root / "one.json",
        "inference.chunk_size=1",
        "inference.num_workers=1",
    )
    assert single.exit_code == 0, single.output
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lvisctl",
        "tta-infer",
        "--run-dir",
        str(run.root),
        "--images",
        str(images),
        "--out",
        str(run.root / "two.json"),
        "inference.chunk_size=1",
        "inference.num_workers=1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for t in ("segm", "bbox"):
        assert (run.root / f"two.{t}.json").read_bytes() == (run.root / f"one.{t}.json").read_bytes()
    assert run.latest("predictions").path == "two.segm.json"
    assert proc.stdout.count("tta-infer") == 1  # only rank 0 prints the summary
