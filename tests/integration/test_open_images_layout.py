"""Issue 26 item 6: Open Images as it is downloaded (CVDF's train_0/ ... train_f/<ImageID>.jpg), its CSV's
Rotation column, no file for 0 labels, the output checked before the model loads, a rerun at another
--score-thresh."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lvisctl.errors import LvisctlError
from tests.helpers.cli import invoke as cli_invoke
from tests.helpers.images import _noise

CSV_HEAD = "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,"
CSV_HEAD += "OriginalMD5,Thumbnail300KURL,Rotation\n"


def invoke(*args):
    return cli_invoke("pseudolabel", *args)


def cvdf_layout(root: Path) -> tuple[Path, Path]:
    """Two images as the CVDF archives extract them, a third one listed but absent; the list as Open
    Images' image-ids CSV (one image with Rotation 90)."""
    for folder, image_id in (("train_0", "000a1249af2bc5f0"), ("train_f", "ffe3a4b2c6d1e9f0")):
        (root / folder).mkdir(parents=True)
        Image.fromarray(_noise(30, 40)).save(root / folder / f"{image_id}.jpg")
    listed = root.parent / "train-images-boxable-with-rotation.csv"
    rows = [
        "000a1249af2bc5f0,train,u,l,c,a,au,t,1,m,th,0.0",
        "ffe3a4b2c6d1e9f0,train,u,l,c,a,au,t,1,m,th,90.0",
        "0123456789abcdef,train,u,l,c,a,au,t,1,m,th,",
    ]
    listed.write_text(CSV_HEAD + "\n".join(rows) + "\n")
    return root, listed


def test_listed_image_ids_are_found_anywhere_under_the_root(run, tmp_path):  # noqa: F811
    root, listed = cvdf_layout(tmp_path / "openimages")
    args = ["openimages", "--run-dir", run.root, "--image-root", root, "--image-list", listed]
    result = invoke(*args, "--score-thresh", "0")
    assert result.exit_code == 0, result.output
    art = run.latest("pseudo-labels")
    assert art.meta["num_images"] == 2  # both found in train_0/ and train_f/; the third is reported
    assert "0123456789abcdef.jpg: image file not found" in result.output
    assert "1 image list entry with a non-zero Rotation: the Rotation column is ignored" in result.output
    # a rerun at another threshold says what to do, before any model is loaded
    again = invoke(*args, "--score-thresh", "0.2")
    assert isinstance(again.exception, LvisctlError)
    text = str(again.exception)
    assert "made with --score-thresh 0 (this run: 0.2); pass --overwrite" in text and "--out" in text


def test_the_output_is_checked_before_the_model_loads(run, tmp_path, monkeypatch):  # noqa: F811
    root, listed = cvdf_layout(tmp_path / "openimages")
    out = run.root / "pseudo_labels" / "mine.json"
    out.parent.mkdir(parents=True)
    out.write_text("[]")

    def no_load(*a, **k):
        raise AssertionError("the checkpoint was loaded before the output path was checked")

    monkeypatch.setattr("lvisctl.engine.checkpoint.load_checkpoint", no_load)
    args = ["openimages", "--run-dir", run.root, "--image-root", root, "--image-list", listed]
    result = invoke(*args, "--out", "pseudo_labels/mine.json")
    assert isinstance(result.exception, LvisctlError) and "already exists" in str(result.exception)


def test_zero_labels_write_no_file(run, tmp_path):  # noqa: F811
    root, listed = cvdf_layout(tmp_path / "openimages")
    args = ["openimages", "--run-dir", run.root, "--image-root", root, "--image-list", listed]
    result = invoke(*args, "--score-thresh", "1")
    assert isinstance(result.exception, LvisctlError), result.output
    assert "not written: 0 pseudo labels kept at score >= 1" in str(result.exception)
    assert not list((run.root / "pseudo_labels").glob("*.json"))
    assert run.find("pseudo-labels") == []


@pytest.mark.parametrize("entry", ["sub/x.jpg"])
def test_a_listed_path_is_taken_as_is(tmp_path, entry):
    from lvisctl.data.image_sources import locate_listed

    (tmp_path / "sub").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "sub" / "x.jpg").write_bytes(b"")
    (tmp_path / "other" / "x.jpg").write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "y.jpg").write_bytes(b"")
    assert list(locate_listed(tmp_path, ["y.jpg", entry, "z.jpg"])) == ["elsewhere/y.jpg", entry, "z.jpg"]
