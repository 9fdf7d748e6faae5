"""``lvisctl visualize``: PNGs with ground truth and predictions drawn, a contact sheet, stable colours."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir, atomic_write_json
from lvisctl.visualization.draw import GAP, TITLE_HEIGHT, category_color
from lvisctl.visualization.render import display_factor
from tests.helpers.cli import invoke as cli_invoke
from tests.helpers.tiny_run import SIZES


def invoke(*args):
    return cli_invoke("visualize", *args)


def test_pngs_differ_from_the_source_under_drawn_masks(tmp_path, inputs):
    gt, preds, data = inputs
    out = tmp_path / "vis"
    result = invoke("--run-dir", tmp_path / "run", "--gt", gt, "--predictions", preds, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "2.png", "3.png", "contact_sheet.png"]
    assert "drew 4 instances on 3 images" in result.output  # 3 GT + 1 prediction >= 0.3
    src = np.asarray(Image.open(data / "img1.png").convert("RGB")).astype(int)
    png = np.asarray(Image.open(out / "1.png").convert("RGB")).astype(int)
    h, w = SIZES[0]
    k = display_factor(h, w)  # 64 x 80 is drawn 4x (nearest), so names stay legible
    assert k == 4 and png.shape == (TITLE_HEIGHT + k * h, 2 * k * w + GAP, 3)  # ground truth | predictions
    gt_panel = png[TITLE_HEIGHT:, : k * w]
    pred_panel = png[TITLE_HEIGHT:, k * w + GAP :]

    def at(panel, y, x):  # the panel pixel showing source pixel (y, x)
        return panel[y * k + k // 2, x * k + k // 2]

    # inside the GT mask [10:30, 10:30], below its label: blended with category 3's colour
    y, x = 25, 25
    assert np.abs(at(gt_panel, y, x) - src[y, x]).sum() > 30
    assert np.allclose(at(gt_panel, y, x), 0.55 * src[y, x] + 0.45 * np.array(category_color(3)), atol=2)
    # the prediction's mask [34:60, 30:70] in category 9's colour (below its label); the 0.1 one is not drawn
    color9 = np.array(category_color(9))
    assert np.allclose(at(pred_panel, 55, 60), 0.55 * src[55, 60] + 0.45 * color9, atol=2)
    assert np.array_equal(at(pred_panel, 2, 2), src[2, 2]) and np.array_equal(
        at(pred_panel, 25, 25), src[25, 25]
    )
    # far from everything, pixels are the source's
    assert np.array_equal(at(gt_panel, h - 3, w - 3), src[h - 3, w - 3])
    assert not RunDir(tmp_path / "run").find("plot")  # --out outside the run dir: not recorded (issue 22)
    again = invoke("--run-dir", tmp_path / "run", "--gt", gt, "--predictions", preds, "--out", out)
    assert isinstance(again.exception, LvisctlError) and "already exists" in str(again.exception)


def test_defaults_from_the_run_and_category_filters(tmp_path, inputs):
    gt, preds, data = inputs
    run = RunDir(tmp_path / "run")
    segm = atomic_write_json(run.root / "predictions" / "val.segm.json", json.loads(preds.read_text()))
    run.register("predictions", segm, meta={"iou_type": "segm", "group": "val", "gt": str(gt)})
    # newer, but pseudo-labelling's: never the default
    other = atomic_write_json(run.root / "predictions" / "train.segm.json", [])
    run.register("predictions", other, meta={"iou_type": "segm", "gt": str(gt), "purpose": "pseudolabel"})
    result = invoke("--run-dir", run.root, "--max-images", "1", "--categories", "c9")
    assert result.exit_code == 0, result.output
    assert f"from {segm}, {gt}" in result.output and "drew 1 instances on 1 images" in result.output
    assert (run.root / "visualize" / "val" / "1.png").is_file()
    groups = invoke("--run-dir", run.root, "--categories", "r", "--out", tmp_path / "r")
    assert groups.exit_code == 0 and "drew 0 instances on 3 images" in groups.output  # all categories are f
    bad = invoke("--run-dir", run.root, "--categories", "c4O,c99")
    assert isinstance(bad.exception, LvisctlError) and "unknown c4O, c99 (did you mean 'c40'?)" in str(
        bad.exception
    )


def test_colours_are_stable_and_distinct():
    colors = [category_color(i) for i in range(1, 1204)]
    assert colors == [category_color(i) for i in range(1, 1204)]
    assert len(set(colors[:60])) == 60 and category_color(3) != category_color(4)


# ------------------------------------------------------------------------------------------ issue 22
def _visualize(tmp_path, *args):
    return invoke("--run-dir", tmp_path / "run", "--out", tmp_path / "vis", *args)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["segmentation"].update(counts="~~~~"), "image 1: RLE counts string is damaged"),
        (
            lambda r: r["segmentation"].update(size=[20000, 20000]),
            "image 1: RLE size [20000, 20000] != image",
        ),
    ],
    ids=["bad-rle", "huge-rle"],
)
def test_bad_or_huge_prediction_rle_is_one_line_before_drawing(tmp_path, inputs, change, message):
    """Item 23: a bad RLE was a traceback; a 20000x20000 one tried to allocate 40 GB."""
    gt, preds, _ = inputs
    records = json.loads(preds.read_text())
    change(records[0])
    preds.write_text(json.dumps(records))
    result = _visualize(tmp_path, "--predictions", preds, "--gt", gt)
    assert isinstance(result.exception, LvisctlError), result.output
    assert message in str(result.exception) and str(preds) in str(result.exception)
    assert not (tmp_path / "vis").exists() or not list((tmp_path / "vis").iterdir())


def test_unreadable_image_is_skipped_and_the_contact_sheet_still_written(tmp_path, inputs):
    """Item 23: visualize stopped at the first unreadable image (no contact sheet)."""
    gt, preds, data = inputs
    (data / "img2.png").write_bytes(b"not a png")
    result = _visualize(tmp_path, "--predictions", preds, "--gt", gt)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vis" / "contact_sheet.png").is_file()
    assert sorted(p.name for p in (tmp_path / "vis").glob("*.png")) == ["1.png", "3.png", "contact_sheet.png"]
    assert "warning: 1 unreadable image(s) skipped: image 2:" in result.output


def test_missing_inputs_say_what_is_missing(tmp_path, inputs):
    """Item 24: a missing --predictions file said 'no images: give --images or --gt'; a missing run dir
    'no predictions recorded'."""
    result = _visualize(tmp_path, "--predictions", tmp_path / "nope.json")
    assert isinstance(result.exception, LvisctlError)
    assert str(result.exception) == f"{tmp_path / 'nope.json'}: predictions file not found"
    result = invoke("--run-dir", tmp_path / "no-such-run")
    assert isinstance(result.exception, LvisctlError)
    assert "run directory does not exist" in str(result.exception)
    assert not (tmp_path / "no-such-run").exists()
