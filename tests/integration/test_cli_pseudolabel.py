"""``lvisctl pseudolabel SOURCE`` end to end with the real (tiny, untrained) model: image folders, Open
Images image lists, LVIS's missing annotations; the outputs validate and load in lvis-api."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lvisctl.cli.app import app
from lvisctl.data.lvis import load_lvis
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from tests.integration.test_cli_tta_infer import add_checkpoint

RNG = np.random.default_rng(0)


def _noise(h: int, w: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return (RNG.random(shape) * 255).astype(np.uint8)


def make_folder(root: Path) -> Path:
    """Nested sub-folders; a JPEG, a PNG, a grayscale JPEG, a corrupt JPEG, a truncated JPEG, a text file."""
    (root / "a" / "b").mkdir(parents=True)
    Image.fromarray(_noise(40, 56)).save(root / "a" / "b" / "0001.jpg", quality=90)
    Image.fromarray(_noise(48, 32)).save(root / "a" / "0002.png")
    Image.fromarray(_noise(36, 44, 1), mode="L").save(root / "0003.jpg")
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = (root / "a" / "b" / "0001.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(good[: len(good) // 2])  # an interrupted download
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "run")
    add_checkpoint(run, stage=1, final=True, seed=1)
    add_checkpoint(run, stage=2, final=True, seed=2)  # newer, but pseudo labels feed stage 1
    return run


def invoke(*args):
    return CliRunner().invoke(app, ["pseudolabel", *map(str, args)])


def test_openimages_folder_skips_unreadable_and_validates(run, tmp_path):
    folder = make_folder(tmp_path / "oi")
    result = invoke("openimages", "--run-dir", run.root, "--image-root", folder, "--score-thresh", "0")
    assert result.exit_code == 0, result.output
    assert "checkpoint: checkpoints/stage1_final.pt (stage 1, iteration 11, final (newest stage-1 final))" in (
        result.output
    )
    assert "skipped 2 unreadable or missing image(s):" in result.output
    assert "a/corrupt.jpg" in result.output and "cut.jpg: truncated JPEG (no end marker)" in result.output
    art = run.latest("pseudo-labels")
    assert art.meta["mode"] == "unlabeled" and art.meta["source"] == "openimages"
    assert art.meta["num_images"] == 3 and art.meta["skipped_images"] == 2
    path = run.resolve(art)
    data = load_lvis(path, image_root=folder, check_images=True)  # what `lvisctl data validate` runs
    names = sorted(img["file_name"] for img in data.images.values())
    assert names == ["0003.jpg", "a/0002.png", "a/b/0001.jpg"]
    sizes = {img["file_name"]: (img["width"], img["height"]) for img in data.images.values()}
    assert sizes == {"0003.jpg": (44, 36), "a/0002.png": (32, 48), "a/b/0001.jpg": (56, 40)}
    assert data.num_annotations > 0 and {c["id"] for c in data.categories.values()} == {3, 9, 40}
    check = CliRunner().invoke(app, ["data", "validate", str(path), "--image-root", str(folder)])
    assert check.exit_code == 0, check.output

    from tests.lvis_reference import LVIS

    assert len(LVIS(str(path)).get_ann_ids()) == data.num_annotations
    # the predictions made on the way are not predictions for evaluation
    preds = run.artifacts("predictions")
    assert preds and all(p.meta["purpose"] == "pseudolabel" for p in preds)
    # stable ids: a second run over the same folder gives the same ids
    again = invoke("images", "--run-dir", run.root, "--images", folder, "--score-thresh", "0", "--out", "x.json")
    assert again.exit_code == 0, again.output
    ids = {i["id"] for i in json.loads((run.root / "x.json").read_text())["images"]}
    assert ids == set(data.images)


def test_open_images_csv_with_a_missing_file(run, tmp_path):
    folder = make_folder(tmp_path / "oi")
    Image.fromarray(_noise(30, 30)).save(folder / "00ab12.jpg")
    csv = tmp_path / "train-images-boxable.csv"
    csv.write_text("ImageID,Subset,OriginalURL\n00ab12,train,http://x\nffff99,train,http://y\n")
    result = invoke("openimages", "--run-dir", run.root, "--image-root", folder, "--image-list", csv)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable or missing image(s):" in result.output
    assert "ffff99.jpg: file not found" in result.output
    art = run.latest("pseudo-labels")
    assert art.meta["num_images"] == 1
    # an untrained model: nothing reaches 0.5, so the command shows the score distribution
    assert art.meta["num_labels"] < 10 and "predicted scores:" in result.output and "p90" in result.output


def test_no_readable_image_is_an_error(run, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"nope")
    result = invoke("images", "--run-dir", run.root, "--images", folder)
    assert result.exit_code != 0 and isinstance(result.exception, LvisctlError)
    assert "no readable image (1 skipped: x.jpg:" in str(result.exception)
    assert not (run.root / "pseudo_labels").exists()


def test_mode_alias_and_bad_thresholds(run, tmp_path):
    bad = invoke("--run-dir", run.root, "--mode", "unlabeled", "--image-root", tmp_path, "--score-thresh", "r=2")
    assert isinstance(bad.exception, LvisctlError) and "--score-thresh 'r=2'" in str(bad.exception)
    wrong = invoke("coco", "--run-dir", run.root)
    assert isinstance(wrong.exception, LvisctlError) and "SOURCE must be one of lvis, openimages" in str(
        wrong.exception
    )
