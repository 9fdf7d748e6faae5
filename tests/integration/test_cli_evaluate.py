"""``lvisctl evaluate`` end to end on hand-made LVIS files: numbers, outputs, run dir, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lvisctl.rundir import RunDir
from lvisctl.rundir.io import sha256_file
from tests.helpers.cli import run_cli
from tests.helpers.eval_cases import edge_case_gt, edge_case_results
from tests.helpers.lvis_reference import lvis_api_metrics, without_bbox, write_json


@pytest.fixture
def files(tmp_path):
    gt = write_json(tmp_path / "gt.json", edge_case_gt())
    res = write_json(tmp_path / "res.json", edge_case_results())
    return tmp_path, gt, res


def test_evaluate_files_writes_json_csv_png_equal_to_lvis_api(files, capsys, monkeypatch):
    tmp, gt, res = files
    code, out, err = run_cli(
        ["evaluate", res, "--gt", gt, "--out", tmp / "m" / "metrics.json"], capsys, monkeypatch
    )
    assert code == 0, err
    metrics = json.loads((tmp / "m" / "metrics.json").read_text())
    for t in ("segm", "bbox"):
        ref = lvis_api_metrics(gt, res, t)
        assert metrics[t] == pytest.approx(ref, abs=1e-6)
    assert metrics["bbox_minus_segm"]["AP"] == pytest.approx(metrics["bbox"]["AP"] - metrics["segm"]["AP"])
    assert "LVIS v1 metrics" in out and "AR@300" in out and "AP bbox - segm" in out
    assert "note: the results have 'bbox'" in out
    rows = list(csv.DictReader((tmp / "m" / "metrics_per_category_ap.csv").open()))
    assert [r["category_id"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[3]["segm_AP"] == "" and rows[0]["frequency"] == "f"  # category 4: no GT in the split
    assert (tmp / "m" / "metrics_ap_by_frequency.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_run_dir_uses_latest_predictions_and_registers(tmp_path, capsys, monkeypatch):
    run = RunDir(tmp_path / "run")
    gt = write_json(tmp_path / "gt.json", edge_case_gt())
    pred = write_json(run.root / "predictions" / "val.json", edge_case_results())
    artifact = run.register("predictions", pred, meta={"gt": gt})
    code, out, err = run_cli(
        ["evaluate", "--run-dir", run.root, "--iou-type", "segm", "--metrics", "fixed"], capsys, monkeypatch
    )
    assert code == 0, err
    metrics_art = run.latest("metrics", iou_types=["segm"])
    assert metrics_art.path == "metrics/val_metrics.json"
    assert [i["path"] for i in metrics_art.inputs] == [artifact.path, gt]
    assert run.latest("plot").path == "metrics/val_metrics_ap_by_frequency.png"
    metrics = json.loads(run.resolve(metrics_art).read_text())
    assert set(metrics) == {"segm", "fixed", "scored"} and "APr" in metrics["fixed"]["segm"]
    assert metrics["scored"]["results"]["segm"]["path"] == str(Path(pred).resolve())
    assert metrics["scored"]["results"]["segm"]["sha256"] == artifact.sha256
    code, _, err = run_cli(["evaluate", "--run-dir", run.root, "--iou-type", "segm"], capsys, monkeypatch)
    assert code == 2 and "pass --overwrite" in err


def test_evaluate_boundary_metric(files, capsys, monkeypatch):
    tmp, gt, res = files
    code, out, err = run_cli(
        ["evaluate", res, "--gt", gt, "--metrics", "boundary", "--out", tmp / "b.json"], capsys, monkeypatch
    )
    assert code == 0, err
    metrics = json.loads((tmp / "b.json").read_text())
    # Boundary IoU <= mask IoU, so Boundary AP cannot exceed mask AP.
    assert -1 < metrics["boundary"]["segm"]["AP"] <= metrics["segm"]["AP"] + 1e-12
    assert "boundary segm" in out


def _results_with(mutation):
    dets = edge_case_results()[:14]
    return mutation(dets)


def _set(i, key, value):
    def f(dets):
        dets[i][key] = value
        return dets

    return f


def _seg(i, **kw):
    def f(dets):
        dets[i]["segmentation"].update(kw)
        return dets

    return f


def _extra_run(dets):
    dets[2]["segmentation"]["counts"] += "1"  # one more run than the 64x64 image holds
    return dets


BAD_INPUTS = {
    "not a list": (lambda d: {"annotations": d}, "results must be a json list of detections"),
    "unknown image id": (_set(2, "image_id", 77), "1 image ids not in"),
    "unknown category id": (_set(2, "category_id", 9999), "1 category ids not in the category table"),
    "RLE of another size": (_seg(2, size=[32, 32]), "RLE size [32, 32] differs from image 1's size [64, 64]"),
    "RLE with bad characters": (_seg(2, counts="~~~~"), "segmentation is not valid compressed RLE"),
    "truncated RLE string": (_seg(2, counts="0" + "R" * 40), "segmentation is not valid compressed RLE"),
    "NaN score": (_set(2, "score", float("nan")), "result 2 has score nan (must be a finite number)"),
    # hotcoco accepts both of these silently; the screen catches them, with or without boxes.
    "RLE runs beyond h*w": (
        _extra_run,
        "result 2: segmentation is not valid compressed RLE (invalid RLE: total",
    ),
    "RLE runs beyond h*w, no boxes": (
        lambda d: without_bbox(_extra_run(d)),
        "result 2: segmentation is not valid compressed RLE (invalid RLE: total",
    ),
    "bbox on some only": (lambda d: d[:3] + without_bbox(d[3:]), "3 of 14 results have 'bbox'"),
    "another split": (
        lambda d: [dict(x, image_id=x["image_id"] + 500) for x in d],
        "results file for another split",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, capsys, monkeypatch, case):
    tmp, gt, _ = files
    mutation, message = BAD_INPUTS[case]
    bad = write_json(tmp / "bad.json", _results_with(mutation))
    out_dir = tmp / "metrics"
    code, out, err = run_cli(["evaluate", bad, "--gt", gt, "--out", out_dir / "m.json"], capsys, monkeypatch)
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not out_dir.exists()


def test_segm_file_without_boxes_has_no_note_and_matches_lvis_api(files, capsys, monkeypatch):
    tmp, gt, _ = files
    res = write_json(tmp / "res.segm.json", without_bbox(edge_case_results()))
    code, out, err = run_cli(["evaluate", res, "--gt", gt, "--iou-type", "segm"], capsys, monkeypatch)
    assert code == 0, err
    assert "note:" not in out and "AR@300" in out
    ref = lvis_api_metrics(gt, res, "segm")
    code, out, err = run_cli(
        ["evaluate", res, "--gt", gt, "--iou-type", "segm", "--out", tmp / "s.json"], capsys, monkeypatch
    )
    assert json.loads((tmp / "s.json").read_text())["segm"] == pytest.approx(ref, abs=1e-9)


def test_run_dir_predictions_changed_after_registration(tmp_path, capsys, monkeypatch):
    run = RunDir(tmp_path / "run")
    gt = write_json(tmp_path / "gt.json", edge_case_gt())
    pred = write_json(run.root / "predictions" / "val.json", edge_case_results())
    run.register("predictions", pred, meta={"gt": gt})
    dets = edge_case_results()
    dets[0]["score"] = 0.5  # still a valid file, but not the one recorded
    write_json(pred, dets)
    code, _, err = run_cli(["evaluate", "--run-dir", run.root], capsys, monkeypatch)
    assert code == 2 and "sha256 no longer matches manifest.json" in err, err
    assert not (run.root / "metrics").exists()


def test_without_numba_the_python_validator_takes_over(files, capsys, monkeypatch):
    import sys

    # numba missing: the compiled reader and kernels cannot load; hotcoco and the Python validator take over
    for name in ("numba", "lvisctl.evaluation._parse_kernel", "lvisctl.evaluation._eval_kernel"):
        monkeypatch.setitem(sys.modules, name, None)
    tmp, gt, res = files
    code, out, err = run_cli(["evaluate", res, "--gt", gt, "--out", tmp / "m.json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads((tmp / "m.json").read_text())["segm"] == pytest.approx(
        lvis_api_metrics(gt, res, "segm")
    )
    bad = write_json(tmp / "bad.json", _results_with(_extra_run))
    code, _, err = run_cli(["evaluate", bad, "--gt", gt], capsys, monkeypatch)
    assert code == 2 and "exceed h*w=4096" in err, err


def test_ground_truth_without_annotations_is_refused(files, capsys, monkeypatch):
    tmp, gt, res = files
    info = json.loads(open(gt).read())
    info["annotations"] = []  # what a test-dev image-info file looks like to the evaluator
    image_info = write_json(tmp / "image_info.json", info)
    code, _, err = run_cli(
        ["evaluate", res, "--gt", image_info, "--out", tmp / "m" / "m.json"], capsys, monkeypatch
    )
    assert code == 2 and "has no annotations (an image-info file?)" in err
    assert not (tmp / "m").exists()


def test_runs_show_refuses_a_plain_folder_and_verify_fails_on_changed_files(tmp_path, capsys, monkeypatch):
    from lvisctl.rundir import atomic_write_json

    code, _, err = run_cli(["runs", "show", tmp_path], capsys, monkeypatch)
    assert code == 2 and "not a run directory" in err
    assert not (tmp_path / "manifest.json").exists()
    run = RunDir(tmp_path / "run")
    path = atomic_write_json(run.root / "m.json", {"AP": 0.1})
    run.register("metrics", path)
    assert run_cli(["runs", "show", run.root, "--verify"], capsys, monkeypatch)[0] == 0
    path.write_text('{"AP": 0.9}')
    code, out, err = run_cli(["runs", "show", run.root, "--verify"], capsys, monkeypatch)
    assert code == 2 and "changed" in out and "1 artifact(s) changed or missing" in err


def test_run_dir_never_scores_pseudolabel_predictions(tmp_path, capsys, monkeypatch):
    """After tta-infer on val, pseudo-labelling registers its train-set predictions (newer): evaluate must
    still score the val ones, say which files it scored, and record them in the metrics json."""
    run = RunDir(tmp_path / "run")
    gt = write_json(tmp_path / "gt.json", edge_case_gt())
    val = write_json(run.root / "predictions" / "val.json", edge_case_results())
    run.register("predictions", val, meta={"gt": gt})
    train_dets = edge_case_results()
    for d in train_dets:
        d["score"] = 1.0 - d["score"]  # other numbers, so scoring the wrong file would show
    pseudo = write_json(run.root / "pseudo" / "train_predictions.json", train_dets)
    run.register("predictions", pseudo, meta={"gt": gt, "purpose": "pseudolabel"})
    code, out, err = run_cli(["evaluate", "--run-dir", run.root, "--iou-type", "segm"], capsys, monkeypatch)
    assert code == 0, err
    assert f"scored segm: {Path(val).resolve()}" in out and f"against gt: {Path(gt).resolve()}" in out
    metrics = json.loads((run.root / "metrics" / "val_metrics.json").read_text())
    assert metrics["scored"] == {
        "results": {"segm": {"path": str(Path(val).resolve()), "sha256": run.find("predictions")[0].sha256}},
        "gt": str(Path(gt).resolve()),
        "gt_sha256": sha256_file(gt),
        "lvis_version": "v1",
    }
    assert metrics["segm"] == pytest.approx(lvis_api_metrics(gt, val, "segm"), abs=1e-9)
    assert metrics["segm"]["AP"] != pytest.approx(lvis_api_metrics(gt, pseudo, "segm")["AP"])


def test_run_dir_with_only_pseudolabel_predictions_is_refused(tmp_path, capsys, monkeypatch):
    run = RunDir(tmp_path / "run")
    gt = write_json(tmp_path / "gt.json", edge_case_gt())
    pseudo = write_json(run.root / "pseudo" / "train.json", edge_case_results())
    run.register("predictions", pseudo, meta={"gt": gt, "purpose": "pseudolabel"})
    code, _, err = run_cli(["evaluate", "--run-dir", run.root], capsys, monkeypatch)
    assert code == 2 and "only pseudo-labelling's internal ones" in err, err
    assert not (run.root / "metrics").exists()


def test_scored_files_printed_with_brackets_intact(files, capsys, monkeypatch):
    tmp, gt, res = files
    odd = tmp / "res[val].json"
    odd.write_text(Path(res).read_text())
    code, out, err = run_cli(["evaluate", odd, "--gt", gt, "--iou-type", "segm"], capsys, monkeypatch)
    assert code == 0, err
    assert f"scored segm: {odd.resolve()}" in out


def test_per_category_prints_best_and_worst_per_frequency(files, capsys, monkeypatch):
    tmp, gt, res = files
    code, out, err = run_cli(
        [
            "evaluate",
            res,
            "--gt",
            gt,
            "--iou-type",
            "segm",
            "--per-category",
            "--top",
            "1",
            "--out",
            tmp / "m.json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "segm AP (%): best / worst 1 categories" in out
    rows = {r["category_id"]: r for r in csv.DictReader((tmp / "m_per_category_ap.csv").open())}  # csv stays
    line_f = next(line for line in out.splitlines() if "│ f " in line)
    ap_f = 100 * float(rows["1"]["segm_AP"])
    assert "cat1 (1)" in line_f and f"{ap_f:.2f}" in line_f


def test_compare_two_metric_files_table2_style(files, capsys, monkeypatch):
    tmp, gt, res = files
    a = write_json(
        tmp / "a.json", {"segm": {"AP": 0.25, "APr": 0.1, "APc": 0.2, "APf": 0.3}, "bbox": {"AP": 0.3}}
    )
    b = write_json(tmp / "b.json", {"segm": {"AP": 0.275, "APr": 0.15, "APc": 0.2, "APf": 0.25}})
    code, out, err = run_cli(["evaluate", "--compare", a, b], capsys, monkeypatch)
    assert code == 0, err
    assert f"A = {a}\n" in out and f"B = {b}\n" in out
    row_a = next(line for line in out.splitlines() if line.startswith("│ A "))
    row_d = next(line for line in out.splitlines() if line.startswith("│ B - A "))
    assert "25.00" in row_a and "30.00" in row_a and "5.00" in row_a  # AP, AP bbox, gap
    cells = [c.strip() for c in row_d.split("│")[2:-1]]
    assert cells == ["+2.50", "+5.00", "+0.00", "-5.00", "n/a", "n/a"]
    code, _, err = run_cli(["evaluate", "--compare", a, gt], capsys, monkeypatch)
    assert code == 2 and "not an lvisctl evaluate metrics json" in err
    code, _, err = run_cli(["evaluate", res, "--compare", a, b], capsys, monkeypatch)
    assert code == 2 and "give no RESULTS or --run-dir with it" in err


def test_best_and_worst_by_hand():
    from lvisctl.evaluation.compare import best_and_worst

    cats = {1: {"frequency": "f"}, 2: {"frequency": "f"}, 3: {"frequency": "f"}, 4: {"frequency": "r"}}
    per = {1: 0.5, 2: 0.9, 3: float("nan"), 4: 0.0}
    out = best_and_worst(per, cats, k=1)
    assert out == {"r": ([(4, 0.0)], [(4, 0.0)]), "c": ([], []), "f": ([(2, 0.9)], [(1, 0.5)])}


def test_run_dir_refuses_a_gt_edited_since_the_predictions(tmp_path, capsys, monkeypatch):
    """Issue 22 item 16: the GT's sha256 is recorded as an input of the predictions; an edit in place
    was scored without a word."""
    run = RunDir(tmp_path / "run")
    gt = write_json(tmp_path / "gt.json", edge_case_gt())
    pred = write_json(run.root / "predictions" / "val.json", edge_case_results())
    run.register("predictions", pred, inputs=[gt], meta={"gt": gt})
    code, _, err = run_cli(["evaluate", "--run-dir", run.root, "--iou-type", "segm"], capsys, monkeypatch)
    assert code == 0, err
    edited = edge_case_gt()
    edited["annotations"] = edited["annotations"][:5]
    write_json(gt, edited)
    args = ["evaluate", "--run-dir", run.root, "--iou-type", "segm", "--out", tmp_path / "m2.json"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "changed since predictions/val.json was predicted on it" in err, err
    assert not (tmp_path / "m2.json").exists()


def test_compare_says_when_the_gt_files_differ(tmp_path, capsys, monkeypatch):
    gt = write_json(tmp_path / "gt.json", edge_case_gt())
    res = write_json(tmp_path / "res.json", edge_case_results())
    edited = edge_case_gt()
    edited["annotations"] = edited["annotations"][:5]
    gt2 = write_json(tmp_path / "gt2.json", edited)
    for name, g in (("a", gt), ("b", gt2), ("c", gt)):
        args = ["evaluate", res, "--gt", g, "--iou-type", "segm", "--out", tmp_path / f"{name}.json"]
        assert run_cli(args, capsys, monkeypatch)[0] == 0
    code, out, _ = run_cli(
        ["evaluate", "--compare", tmp_path / "a.json", tmp_path / "b.json"], capsys, monkeypatch
    )
    assert code == 0 and "A and B were scored on different ground truth" in out
    code, out, _ = run_cli(
        ["evaluate", "--compare", tmp_path / "a.json", tmp_path / "c.json"], capsys, monkeypatch
    )
    assert code == 0 and "different ground truth" not in out


def test_tracebacks_of_issue_22_are_one_line(tmp_path, capsys, monkeypatch):
    """Item 23: a results file nested 100k deep (RecursionError), --compare with a string metric;
    item 24: a folder given as a file was 'no such file'."""
    gt = write_json(tmp_path / "gt.json", edge_case_gt())
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_cli(["evaluate", deep, "--gt", gt], capsys, monkeypatch)
    assert code == 2 and "nested too deeply" in err and len(err.strip().splitlines()) == 1, err
    res = write_json(tmp_path / "res.json", edge_case_results())
    assert run_cli(["evaluate", res, "--gt", gt, "--out", tmp_path / "a.json"], capsys, monkeypatch)[0] == 0
    metrics = json.loads((tmp_path / "a.json").read_text())
    metrics["segm"]["APr"] = "high"
    (tmp_path / "b.json").write_text(json.dumps(metrics))
    code, _, err = run_cli(
        ["evaluate", "--compare", tmp_path / "a.json", tmp_path / "b.json"], capsys, monkeypatch
    )
    assert code == 2 and "segm.APr is 'high', not a number" in err, err
    code, _, err = run_cli(["evaluate", tmp_path, "--gt", gt], capsys, monkeypatch)
    assert code == 2 and "is a folder" in err, err
