"""LVIS file loading (streaming), validation messages and segmentation decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lvisctl.data import json_stream
from lvisctl.data import lvis as lvis_io
from lvisctl.data.lvis import ann_to_mask, annotation_to_json, load_lvis
from lvisctl.errors import LvisctlError


def _image(img_id: int, **extra) -> dict:
    rec = {
        "id": img_id,
        "width": 10,
        "height": 8,
        "coco_url": f"http://images.cocodataset.org/train2017/{img_id:012d}.jpg",
        "neg_category_ids": [],
        "not_exhaustive_category_ids": [],
    }
    return {**rec, **extra}


def _ann(ann_id: int, image_id: int, cat: int, seg, bbox=(0, 0, 1, 1), area: float = 1.0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg, "area": area,
            "bbox": list(bbox)}  # fmt: skip


def _lvis_dict() -> dict:
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((2, 3), np.uint8), ((1, 5), (4, 3)))))
    return {
        "info": {"description": "hand made"},
        "licenses": [],
        "annotations": [
            # square with corners (2,2)-(5,4): pixels x 2..4, y 2..3 -> 6 pixels
            _ann(1, 1, 3, [[2, 2, 5, 2, 5, 4, 2, 4]], [2.0, 2.0, 3.0, 2.0], 6.0),
            _ann(2, 1, 7, [[0, 0, 1, 0, 1, 1, 0, 1], [8, 6, 10, 6, 10, 8, 8, 8]], [0.0, 0.0, 10.0, 8.0], 5.0),
            _ann(3, 2, 3, {"size": [8, 10], "counts": rle["counts"].decode()}, [4.0, 1.0, 3.0, 2.0], 6.0),
        ],
        "images": [
            _image(1, neg_category_ids=[9], not_exhaustive_category_ids=[7]),
            _image(2),
            _image(3, file_name="x/y.png"),
        ],
        "categories": [
            {"id": 3, "name": "apple", "frequency": "f"},
            {"id": 7, "name": "ring", "frequency": "r"},
            {"id": 9, "name": "cake", "frequency": "c"},
        ],
    }  # fmt: skip


def _write(tmp_path: Path, data: dict | str, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=1))
    return path


def test_load_indexes_records_and_compacts_polygons(tmp_path):
    data = load_lvis(_write(tmp_path, _lvis_dict()))
    assert sorted(data.images) == [1, 2, 3] and sorted(data.categories) == [3, 7, 9]
    assert [a["id"] for a in data.anns_by_image[1]] == [1, 2] and data.anns_by_image[3] == []
    seg = data.anns_by_image[1][1]["segmentation"]
    assert [p.dtype for p in seg] == [np.float32, np.float32] and seg[1].tolist() == [
        8,
        6,
        10,
        6,
        10,
        8,
        8,
        8,
    ]
    assert data.num_annotations == 3 and data.has_annotations and data.info == {"description": "hand made"}
    assert data.image_path(1) == tmp_path / "train2017" / "000000000001.jpg"
    # coco_url's place first (detectron2); file_name where only that one holds the file
    assert data.image_path(3) == tmp_path / "train2017" / "000000000003.jpg"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "y.png").write_bytes(b"")
    assert data.image_path(3) == tmp_path / "x" / "y.png"


def test_category_stats_counts_from_annotations(tmp_path):
    stats = load_lvis(_write(tmp_path, _lvis_dict())).category_stats()
    # class order = sorted ids 3, 7, 9; category 3 is in images 1 and 2 (2 instances), 7 in image 1
    assert stats.image_count.tolist() == [2, 1, 0]
    assert stats.instance_count.tolist() == [2, 1, 0]
    assert stats.frequency == ("f", "r", "c") and stats.num_images == 3


def test_streaming_across_tiny_chunks_gives_the_same_result(tmp_path, monkeypatch):
    path = _write(tmp_path, _lvis_dict())
    whole = load_lvis(path)
    monkeypatch.setattr(json_stream, "_CHUNK_CHARS", 7)  # every token straddles a chunk boundary
    chunked = load_lvis(path)
    assert chunked.images == whole.images and chunked.categories == whole.categories
    for img_id, anns in whole.anns_by_image.items():
        assert [annotation_to_json(a) for a in chunked.anns_by_image[img_id]] == [
            annotation_to_json(a) for a in anns
        ]


def test_ann_to_mask_polygons_and_rle(tmp_path):
    data = load_lvis(_write(tmp_path, _lvis_dict()))
    square = ann_to_mask(data.anns_by_image[1][0], 8, 10)
    expected = np.zeros((8, 10), np.uint8)
    expected[2:4, 2:5] = 1
    assert square.dtype == np.uint8 and np.array_equal(square, expected)
    two = ann_to_mask(data.anns_by_image[1][1], 8, 10)  # union of two polygons: pixel (0,0) + 2x2 corner
    assert two.sum() == 5 and two[0, 0] == 1 and two[6:8, 8:10].sum() == 4
    rle = ann_to_mask(data.anns_by_image[2][0], 8, 10)
    assert rle.sum() == 6 and rle[1:3, 4:7].all()
    uncompressed = {"segmentation": {"size": [8, 10], "counts": [11, 3, 66]}}  # column-major runs
    assert ann_to_mask(uncompressed, 8, 10).sum() == 3


def test_annotation_to_json_round_trips(tmp_path):
    data = load_lvis(_write(tmp_path, _lvis_dict()))
    out = annotation_to_json(data.anns_by_image[1][1])
    assert out["segmentation"] == [[0, 0, 1, 0, 1, 1, 0, 1], [8, 6, 10, 6, 10, 8, 8, 8]]
    json.dumps(out)  # plain json types only


def test_image_info_file_without_annotations(tmp_path):
    raw = _lvis_dict()
    del raw["annotations"]
    for img in raw["images"]:  # test-dev image info has no federated label lists
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    data = load_lvis(_write(tmp_path, raw))
    assert not data.has_annotations and data.num_annotations == 0 and len(data.images) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"images": [1, 2,', "not valid json"),
        ('{"images": []}\n{', "extra data after the top-level object at line 2 column 1"),
        ("[1, 2]", "an LVIS file must be a json object"),
        ('{"images": [],\n "categories": [}', "at line 2"),
    ],
)
def test_malformed_json_names_file_and_position(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(LvisctlError) as err:
        load_lvis(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_validation_reports_every_problem_in_one_line(tmp_path):
    raw = _lvis_dict()
    raw["images"].append(_image(2))  # duplicate image id
    tri = [[0, 0, 1, 0, 1, 1]]
    raw["annotations"] += [_ann(1, 2, 3, tri), _ann(5, 42, 3, tri), _ann(6, 2, 99, tri)]
    raw["annotations"] += [_ann(7, 2, 3, [[0, 0, 1, 0]], bbox=[0, 0, 0, 1]), _ann(8, 2, 3, None)]
    del raw["annotations"][-1]["segmentation"]
    raw["images"][0]["neg_category_ids"] = [3]  # category 3 is annotated in image 1
    path = _write(tmp_path, raw)
    with pytest.raises(LvisctlError) as err:
        load_lvis(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: 8 problems: ")
    # the first five are listed, the rest counted
    listed = (
        "duplicate image id 2; duplicate annotation id 1; annotation 5: image_id 42 is not in 'images'; "
        "annotation 6: category_id 99 not in 'categories'; "
        "annotation 7: degenerate bbox [0, 0, 0, 1] (width and height must be > 0); ... and 3 more"
    )
    assert msg.endswith(listed)
    _, problems = lvis_io._load_unchecked(path, None)
    assert problems[5:] == [
        "annotation 7: degenerate polygon with 4 coordinates (needs an even number >= 6)",
        "annotation 8: missing key(s) segmentation",
        "image 1: categories [3] annotated but in neg_category_ids",
    ]


def test_missing_images_are_all_reported(tmp_path):
    path = _write(tmp_path, _lvis_dict())
    (tmp_path / "train2017").mkdir()
    (tmp_path / "train2017" / "000000000002.jpg").write_bytes(b"")  # exists, but empty: not an image
    with pytest.raises(
        LvisctlError,
        match=r"3 problems: image 1: file .*000000000001.jpg not found .*; "
        r"image 3: .*; image 2: .*empty file",
    ):
        load_lvis(path, check_images=True)
    load_lvis(path)  # not checked by default
    assert len(load_lvis(path, image_root=tmp_path).images) == 3


def test_missing_file_and_missing_top_level_keys(tmp_path):
    with pytest.raises(LvisctlError, match="file not found"):
        load_lvis(tmp_path / "nope.json")
    path = _write(tmp_path, {"annotations": []})
    with pytest.raises(
        LvisctlError, match="2 problems: missing top-level key 'images'; missing top-level key"
    ):
        load_lvis(path)
