"""``evaluate X.segm.json`` scores bbox on ``X.bbox.json`` (the model's boxes), says so when it cannot,
``--compare`` flags box APs of different sources, and a registered file finds its gt (issue 20, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lvisctl.rundir import RunDir
from tests.helpers.cli import run_cli
from tests.helpers.lvis_reference import (
    gt_rect,
    lvis_api_metrics,
    lvis_category,
    lvis_dataset,
    lvis_image,
    rect_rle,
    write_json,
)


def pair_case(folder: Path) -> tuple[str, Path, Path]:
    """GT masks as the segm results; the model's boxes shifted right by 40% of their width."""
    images = [lvis_image(i, 96, 96) for i in (1, 2)]
    anns = [
        gt_rect(1, 1, 1, 4, 4, 30, 20),
        gt_rect(2, 1, 1, 50, 40, 24, 30),
        gt_rect(3, 2, 2, 10, 10, 40, 40),
    ]
    gt = write_json(
        folder / "gt.json", lvis_dataset(images, anns, [lvis_category(1, "f"), lvis_category(2, "c")])
    )
    segm, bbox = [], []
    for a in anns:
        x, y, w, h = (int(v) for v in a["bbox"])
        base = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9}
        segm.append({**base, "segmentation": rect_rle(x, y, w, h, 96, 96)})
        bbox.append({**base, "bbox": [x + 0.4 * w, float(y), float(w), float(h)]})
    return (
        gt,
        Path(write_json(folder / "val.segm.json", segm)),
        Path(write_json(folder / "val.bbox.json", bbox)),
    )


def test_segm_file_is_scored_with_its_bbox_file(tmp_path, capsys, monkeypatch):
    gt, segm, bbox = pair_case(tmp_path)
    code, out, err = run_cli(
        ["evaluate", segm, "--gt", gt, "--out", tmp_path / "m.json"], capsys, monkeypatch
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["bbox"] == pytest.approx(lvis_api_metrics(gt, str(bbox), "bbox"), abs=1e-9)
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] < 0.2
    assert metrics["bbox_minus_segm"]["AP"] == pytest.approx(metrics["bbox"]["AP"] - 1.0)
    assert f"scored segm: {segm.resolve()}" in out and f"scored bbox: {bbox.resolve()}" in out
    assert metrics["scored"]["results"]["bbox"] == {"path": str(bbox.resolve()), "boxes": "model"}


def test_segm_file_alone_says_box_ap_comes_from_mask_boxes(tmp_path, capsys, monkeypatch):
    gt, segm, bbox = pair_case(tmp_path)
    bbox.unlink()
    code, out, err = run_cli(
        ["evaluate", segm, "--gt", gt, "--out", tmp_path / "m.json"], capsys, monkeypatch
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert "bbox_minus_segm" not in metrics and "AP bbox - segm" not in out
    assert metrics["scored"]["results"]["bbox"]["boxes"] == "masks"
    assert "box AP comes from boxes derived from the masks" in " ".join(out.split())


def test_compare_flags_box_aps_of_different_sources(tmp_path, capsys, monkeypatch):
    gt, segm, bbox = pair_case(tmp_path)
    assert run_cli(["evaluate", segm, "--gt", gt, "--out", tmp_path / "a.json"], capsys, monkeypatch)[0] == 0
    bbox.unlink()
    assert run_cli(["evaluate", segm, "--gt", gt, "--out", tmp_path / "b.json"], capsys, monkeypatch)[0] == 0
    code, out, err = run_cli(
        ["evaluate", "--compare", tmp_path / "a.json", tmp_path / "b.json"], capsys, monkeypatch
    )
    assert code == 0, err
    flat = " ".join(out.split())
    assert "warning: box AP of A comes from the model's boxes, of B from boxes derived from masks" in flat
    assert "│ A (model boxes)" in out and "│ B (mask boxes)" in out
    same = run_cli(["evaluate", "--compare", tmp_path / "a.json", tmp_path / "a.json"], capsys, monkeypatch)[
        1
    ]
    assert "warning" not in same and "boxes)" not in same


def test_registered_file_takes_gt_from_the_manifest(tmp_path, capsys, monkeypatch):
    run = RunDir(tmp_path / "run")
    gt, segm, bbox = pair_case(run.root / "predictions")
    run.register("predictions", segm, meta={"gt": gt, "iou_type": "segm", "group": "val"})
    code, out, err = run_cli(["evaluate", segm, "--iou-type", "segm"], capsys, monkeypatch)
    assert code == 0, err
    assert f"against gt: {Path(gt).resolve()}" in out
    stray = tmp_path / "stray.segm.json"
    stray.write_text(segm.read_text())
    code, _, err = run_cli(["evaluate", stray], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and f"{stray}: no --gt given" in err
