"""Bad LVIS data caught when the json loads (issue 9 items 1, 3, 4, 9, 13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lvisctl.config import ConfigNode
from lvisctl.data import synth
from lvisctl.data.lvis import (
    ann_to_mask,
    load_lvis,
    resolve_image_root,
    rle_problem,
    rle_string_counts,
)
from lvisctl.data.synth import generate_synthetic_lvis
from lvisctl.errors import LvisctlError


def _lvis(seg, bbox=(1, 1, 3, 3), h=8, w=10) -> dict:
    return {
        "images": [{"id": 1, "width": w, "height": h, "file_name": "a.png", "neg_category_ids": [],
                    "not_exhaustive_category_ids": []}],
        "categories": [{"id": 1, "name": "x", "frequency": "f"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg, "area": 1.0,
                         "bbox": list(bbox)}],
    }  # fmt: skip


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------ item 4
def test_rle_string_decoder_matches_pycocotools():
    rng = np.random.default_rng(0)
    mask = np.asfortranarray((rng.random((13, 17)) > 0.6).astype(np.uint8))
    rle = mask_utils.encode(mask)
    runs = rle_string_counts(rle["counts"])
    assert sum(runs) == 13 * 17
    flat = np.concatenate([np.full(r, i % 2, np.uint8) for i, r in enumerate(runs)])
    assert (flat == mask.flatten(order="F")).all()


@pytest.mark.parametrize(
    ("seg", "problem"),
    [
        ({"size": [8, 10], "counts": [0, 100]}, "RLE runs cover 100 pixels, not height x width = 80"),
        ({"size": [8, 10], "counts": [0, 10]}, "RLE runs cover 10 pixels"),  # short: uninitialised memory
        ({"size": [8, 10], "counts": [5, -5, 80]}, "non-negative integers"),
        ({"size": [8, 10], "counts": "garbage~~"}, "RLE counts string is damaged"),
        ({"size": [8, 10], "counts": "0"}, "RLE runs cover 0 pixels"),
        ({"size": [8, 10], "counts": "1o"}, "ends in the middle of a number"),
        ({"size": [8, 9], "counts": [72]}, "RLE size [8, 9] != image size [8, 10]"),
        ({"size": "8x10", "counts": [80]}, "is not [height, width]"),
    ],
)
def test_bad_rle_is_refused_when_the_json_loads(tmp_path, seg, problem):
    path = _write(tmp_path, _lvis(seg))
    with pytest.raises(LvisctlError) as err:
        load_lvis(path)
    assert "annotation 1: " in str(err.value) and problem in str(err.value)


def test_good_rles_pass():
    assert rle_problem({"size": [8, 10], "counts": [3, 77]}, 8, 10) is None
    rle = mask_utils.encode(np.asfortranarray(np.ones((8, 10), np.uint8)))
    assert rle_problem({"size": [8, 10], "counts": rle["counts"].decode()}, 8, 10) is None


@pytest.mark.parametrize(
    ("poly", "problem"),
    [
        ([[1, 1, 5, 1]], "degenerate polygon with 4 coordinates"),
        ([[1, 1, 5, 1, 5, 5, 1]], "degenerate polygon with 7 coordinates"),
        ([[1, 1, 5, 1, 5, float("nan")]], "not a finite number"),
        ([[1, 1, 5, 1, 5, 1e400]], "not a finite number"),
    ],
)
def test_bad_polygons_are_refused(tmp_path, poly, problem):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_lvis(poly)).replace("Infinity", "1e400"))
    with pytest.raises(LvisctlError, match=problem):
        load_lvis(path)


def test_one_decoder_tolerates_degenerate_parts():
    ann = {
        "segmentation": [np.array([0, 0, 1, 0], np.float32), np.array([1, 1, 4, 1, 4, 4, 1, 4], np.float32)]
    }
    mask = ann_to_mask(ann, 6, 6)
    assert mask.sum() == 9 and mask[1:4, 1:4].all()


# ------------------------------------------------------------------------------------------ item 13
def test_box_entirely_outside_the_image_is_refused(tmp_path):
    seg = [[1, 1, 3, 1, 3, 3]]
    for box in ([10, 2, 3, 3], [2, 8, 3, 3], [-5, 2, 5, 3], [2, -4, 3, 4]):
        with pytest.raises(LvisctlError, match=r"bbox .* lies entirely outside its 10x8 image"):
            load_lvis(_write(tmp_path, _lvis(seg, bbox=box)))
    load_lvis(_write(tmp_path, _lvis(seg, bbox=[8, 6, 5, 5])))  # partly outside: LVIS has those


def test_validate_checks_image_files_headers_and_sizes(tmp_path):
    data = _lvis([[1, 1, 3, 1, 3, 3]])
    data["images"] += [
        {**data["images"][0], "id": i, "file_name": name}
        for i, name in [(2, "b.jpg"), (3, "c.png"), (4, "d.png")]
    ]
    path = _write(tmp_path, data)
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").write_bytes((tmp_path / "b.jpg").read_bytes()[:-40])  # truncated download
    (tmp_path / "c.png").write_bytes(b"")  # empty
    Image.fromarray(np.zeros((9, 10, 3), np.uint8)).save(tmp_path / "d.png")  # wrong size
    with pytest.raises(LvisctlError) as err:
        load_lvis(path, check_images=True)
    msg = str(err.value)
    assert msg.startswith(f"{path}: 3 problems: ")
    assert "image 2: " in msg and "truncated" in msg
    assert "image 3: " in msg and "empty file" in msg
    assert "image 4: " in msg and "image is 10x9 but the annotation file says 10x8" in msg


# ------------------------------------------------------------------------------------------ item 9
def test_bom_is_accepted_and_non_utf8_and_lists_say_what_is_wrong(tmp_path):
    raw = json.dumps(_lvis([[1, 1, 3, 1, 3, 3]]))
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + raw.encode())
    assert len(load_lvis(path).images) == 1
    latin = tmp_path / "latin.json"
    latin.write_bytes(raw.replace('"x"', '"caf\xe9"').encode("latin-1"))
    with pytest.raises(LvisctlError, match=r"latin.json: not UTF-8 text \(byte 0xe9 on or after line 1\)"):
        load_lvis(latin)
    lst = tmp_path / "list.json"
    lst.write_text("[]")
    with pytest.raises(LvisctlError, match="valid json, but the top level is a list; an LVIS file must be"):
        load_lvis(lst)
    with pytest.raises(LvisctlError, match="is a directory"):
        load_lvis(tmp_path)


# ------------------------------------------------------------------------------------------ item 3
def test_image_root_resolution_order(tmp_path):
    data = ConfigNode({"root": str(tmp_path / "datasets"), "image_root": "coco"})
    root = resolve_image_root(data)
    assert root.path == tmp_path / "datasets" / "coco" and root.source == "data.root + data.image_root"
    assert resolve_image_root(data, option="/x").path == Path("/x")
    assert resolve_image_root(data, option="/x").source == "--image-root"
    absolute = ConfigNode({"root": "/elsewhere", "image_root": str(tmp_path)})
    assert resolve_image_root(absolute).path == tmp_path
    assert resolve_image_root(absolute).source == "data.image_root"
    assert resolve_image_root(ConfigNode({"root": "/r", "image_root": ""})) is None  # each json's folder
    assert resolve_image_root(None) is None


def test_missing_image_message_names_the_setting(tmp_path):
    path = _write(tmp_path, _lvis([[1, 1, 3, 1, 3, 3]]))
    root = resolve_image_root(ConfigNode({"root": "", "image_root": str(tmp_path / "imgs")}))
    with pytest.raises(LvisctlError, match=r"not found under image root .*imgs \(data.image_root\)"):
        load_lvis(path, image_root=root, check_images=True)


# ------------------------------------------------------------------------------------------ item 1
def test_overwrite_replaces_only_a_folder_synth_wrote(tmp_path):
    out = tmp_path / "w"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LvisctlError, match=r"not a dataset folder written by 'lvisctl data synth'"):
        generate_synthetic_lvis(out, preset="tiny", write_images=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir()

    own = tmp_path / "own"
    generate_synthetic_lvis(own, preset="tiny", write_images=False)
    assert (own / synth.SYNTH_MARKER).is_file()
    generate_synthetic_lvis(own, preset="tiny", seed=4, write_images=False, overwrite=True)  # ours: replaced
    (own / "val2017").mkdir()
    (own / "val2017" / "added.jpg").write_text("user file")
    with pytest.raises(LvisctlError, match=r"holds files .* did not write \(val2017/added.jpg\)"):
        generate_synthetic_lvis(own, preset="tiny", write_images=False, overwrite=True)
    assert (own / "val2017" / "added.jpg").exists()


def test_polygon_far_outside_the_image_is_refused(tmp_path):
    """Issue 22 item 18: a polygon coordinate of 1e9 was 'valid'."""
    with pytest.raises(
        LvisctlError, match=r"polygon coordinates lie far outside its 10x8 image \(up to 1e\+09\)"
    ):
        load_lvis(_write(tmp_path, _lvis([[1, 1, 5, 1, 5, 1e9]])))
    with pytest.raises(LvisctlError, match="far outside"):
        load_lvis(_write(tmp_path, _lvis([[1, 1, 3, 1, 3, 3], [1, 1, -500, 1, 5, 5]])))
    load_lvis(_write(tmp_path, _lvis([[1, 1, 11.5, 1, 11.5, 9.5]])))  # a little beyond the border: real data
