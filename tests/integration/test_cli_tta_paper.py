"""``tta-infer --tta paper``, ``tta-infer --checkpoint A --checkpoint B`` and ``lvisctl ensemble`` end to
end on tiny data, with the real model: outputs load in lvis-api and pass submit's checks."""

import json

import pytest

from lvisctl.errors import LvisctlError
from tests.helpers.cli import invoke as cli_invoke
from tests.helpers.cli import run_cli
from tests.helpers.lvis_reference import lvis_api_metrics
from tests.helpers.tiny_run import SIZES


def invoke(*args):
    return cli_invoke("tta-infer", *args)


PAPER = ["--tta", "paper", "--scales", "40,56", "inference.tta.valid_ranges=[[16,null],[0,40]]"]


def records(path):
    return json.loads(path.read_text())


def test_paper_tta_writes_registered_results_that_lvis_api_and_submit_take(setup, capsys, monkeypatch):
    run, images, _ = setup
    result = invoke("--run-dir", run.root, "--images", images, *PAPER)
    assert result.exit_code == 0, result.output
    segm_art = run.latest("predictions")
    assert segm_art.path == "predictions/val_stage2_final_s40-56_paper.segm.json"
    assert segm_art.meta["tta"] == "paper" and segm_art.meta["scales"] == [40, 56]
    assert segm_art.config["inference"]["tta"]["flip"] is False  # the paper never mentions flip
    segm = records(run.resolve(segm_art))
    assert {r["image_id"] for r in segm} == {1, 2, 3}
    assert all(sum(r["image_id"] == i for r in segm) <= 300 for i in (1, 2, 3))
    assert all(0 <= r["score"] <= 1 for r in segm)
    for r in segm:
        assert r["segmentation"]["size"] == list(SIZES[r["image_id"] - 1])
    bbox_file = run.root / "predictions" / "val_stage2_final_s40-56_paper.bbox.json"
    for iou_type, path in (("segm", run.resolve(segm_art)), ("bbox", bbox_file)):
        assert "APr" in lvis_api_metrics(images, path, iou_type)
    code, _, err = run_cli(["submit", "--run-dir", run.root, "--image-info", images], capsys, monkeypatch)
    assert code == 0, err


def test_paper_tta_differs_from_plain_and_each_switch_is_honoured(setup):
    run, images, _ = setup
    out = run.root / "paper.json"
    assert invoke("--run-dir", run.root, "--images", images, *PAPER, "--out", out).exit_code == 0
    plain = run.root / "plain.json"
    assert (
        invoke("--run-dir", run.root, "--images", images, "--scales", "40,56", "--out", plain).exit_code == 0
    )
    assert records(run.root / "paper.segm.json") != records(run.root / "plain.segm.json")
    off = [
        "inference.tta.flip=false",
        "inference.tta.range_filter=false",
        "inference.tta.rare_boost=false",
        "inference.tta.soft_nms=false",
        "inference.tta.mask_from_best_scale=false",
    ]
    all_off = run.root / "off.json"
    result = invoke("--run-dir", run.root, "--images", images, *PAPER, *off, "--out", all_off)
    assert result.exit_code == 0, result.output
    # every modification and the flip off: the plain multi-scale test. Both keep the model's RoI masks and
    # paste them once at the original size, so the masks are the same too
    got, ref = records(run.root / "off.bbox.json"), records(run.root / "plain.bbox.json")
    assert [(r["image_id"], r["category_id"], r["bbox"]) for r in got] == [
        (r["image_id"], r["category_id"], r["bbox"]) for r in ref
    ]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in ref])
    got, ref = records(run.root / "off.segm.json"), records(run.root / "plain.segm.json")
    assert [r["segmentation"] for r in got] == [r["segmentation"] for r in ref] and got


def test_paper_tta_resumes_to_identical_files(setup):
    run, images, _ = setup
    args = ["--run-dir", run.root, "--images", images, *PAPER, "inference.chunk_size=1"]
    assert invoke(*args, "--out", run.root / "full.json").exit_code == 0
    assert invoke(*args, "--out", run.root / "resumed.json", "--max-chunks", "2").exit_code == 75
    assert invoke(*args, "--out", run.root / "resumed.json").exit_code == 0
    for t in ("segm", "bbox"):
        assert (run.root / f"resumed.{t}.json").read_bytes() == (run.root / f"full.{t}.json").read_bytes()


def test_bad_tta_settings_are_one_line_errors(setup):
    run, images, _ = setup
    # ranges a user set are checked against the scales (the packaged ones are derived for other scales)
    ranges = "inference.tta.valid_ranges=[[0,null],[0,64]]"
    bad = invoke("--run-dir", run.root, "--images", images, "--tta", "paper", "--scales", "40,48,56", ranges)
    assert isinstance(bad.exception, LvisctlError) and "2 ranges for 3 test scales" in str(bad.exception)
    unknown = invoke("--run-dir", run.root, "--images", images, "--tta", "fancy")
    assert unknown.exit_code == 2 and "'fancy' is not one of" in unknown.output  # a choice: listed in --help
    assert not (run.root / "predictions").exists() or not list((run.root / "predictions").iterdir())


def test_two_checkpoints_are_fused_in_one_pass(setup):
    run, images, stage2 = setup
    stage1 = run.root / "checkpoints" / "stage1_final.pt"
    args = ["--run-dir", run.root, "--images", images, "--scales", "48"]
    result = invoke(
        *args, "--checkpoint", stage2, "--checkpoint", stage1, "inference.detections_per_image=20"
    )
    assert result.exit_code == 0, result.output
    art = run.latest("predictions")
    assert art.path == "predictions/val_stage2_final+1_s48.segm.json"
    assert [i["path"] for i in art.inputs][:2] == [
        "checkpoints/stage2_final.pt",
        "checkpoints/stage1_final.pt",
    ]
    assert art.meta["checkpoints"] == ["checkpoints/stage2_final.pt", "checkpoints/stage1_final.pt"]
    segm = records(run.resolve(art))
    assert all(sum(r["image_id"] == i for r in segm) <= 20 for i in (1, 2, 3))
    assert "APr" in lvis_api_metrics(images, run.resolve(art), "segm")


def test_ensemble_command_fuses_results_files(setup, capsys, monkeypatch):
    run, images, stage2 = setup
    stage1 = run.root / "checkpoints" / "stage1_final.pt"
    for name, ckpt in (("a", stage2), ("b", stage1)):
        r = invoke(
            "--run-dir",
            run.root,
            "--images",
            images,
            "--checkpoint",
            ckpt,
            "--out",
            run.root / f"{name}.json",
        )
        assert r.exit_code == 0, r.output
    out = run.root / "ens.json"
    args = ["ensemble", run.root / "a.segm.json", run.root / "b.json", "--out", out, "--run-dir", run.root]
    code, stdout, err = run_cli([*args, "--weights", "2,1"], capsys, monkeypatch)
    assert code == 0, err
    assert "ensemble (wbf)" in stdout
    art = run.latest("predictions")
    assert art.path == "ens.segm.json" and art.meta["ensemble"]["weights"] == [2.0, 1.0]
    assert [i["path"] for i in art.inputs] == ["a.segm.json", "a.bbox.json", "b.segm.json", "b.bbox.json"]
    assert art.meta["gt"] == str(images.resolve())
    segm, bbox = records(run.root / "ens.segm.json"), records(run.root / "ens.bbox.json")
    assert len(segm) == len(bbox) > 0 and {r["image_id"] for r in segm} == {1, 2, 3}
    for iou_type, path in (("segm", run.root / "ens.segm.json"), ("bbox", run.root / "ens.bbox.json")):
        assert "APr" in lvis_api_metrics(images, path, iou_type)
    code, _, err = run_cli(["submit", "--run-dir", run.root, "--image-info", images], capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(["evaluate", "--run-dir", run.root], capsys, monkeypatch)
    assert code == 0, err

    # resumable: an interrupted run finishes to the same files
    part = [*args, "--weights", "2,1", "--chunk-size", "1"]
    code, _, _ = run_cli(
        [*part[:4], run.root / "ens2.json", *part[5:], "--max-chunks", "1"], capsys, monkeypatch
    )
    assert code == 75 and not (run.root / "ens2.segm.json").exists()
    code, _, err = run_cli([*part[:4], run.root / "ens2.json", *part[5:]], capsys, monkeypatch)
    assert code == 0, err
    assert (run.root / "ens2.segm.json").read_bytes() == (run.root / "ens.segm.json").read_bytes()


def test_ensemble_bad_input_is_one_line_and_writes_nothing(setup, capsys, monkeypatch, tmp_path):
    run, images, _ = setup
    assert invoke("--run-dir", run.root, "--images", images, "--out", run.root / "a.json").exit_code == 0
    a = run.root / "a.segm.json"
    other = tmp_path / "other.json"  # results for an image set with another image
    other.write_text(json.dumps([{**r, "image_id": 99} if r["image_id"] == 3 else r for r in records(a)]))
    out = tmp_path / "x.json"
    cases = [
        (["--weights", "1,2,3"], [a, a], "3 weights for 2 results files"),
        ([], [a, other], "different image sets"),
        (["--images", images], [a, other], "not in"),
        (["--method", "max"], [a, a], "--method 'max'"),
        ([], [a, tmp_path / "missing.json"], "results file not found"),
    ]
    for extra, inputs, message in cases:
        code, _, err = run_cli(["ensemble", *inputs, "--out", out, *extra], capsys, monkeypatch)
        assert code != 0 and message in err, (message, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
        assert not list(tmp_path.glob("x*")) and not (tmp_path / ".partial").exists()
