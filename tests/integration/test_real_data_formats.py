"""LVIS v0.5 and COCO files: image paths (coco_url first, then file_name with mmdet's COCO-2014 rule),
``evaluate`` naming v0.5, a COCO file refused in one line, and ``lvisctl data convert --from coco``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lvisctl.data.convert import frequency_of
from lvisctl.data.formats import find_image, image_relpaths
from lvisctl.data.lvis import load_lvis
from lvisctl.data.self_training import load_missing_annotations
from lvisctl.errors import LvisctlError
from tests.helpers.cli import run_cli
from tests.helpers.eval_cases import edge_case_gt, edge_case_results
from tests.helpers.lvis_reference import write_json

V05_IMAGE = {
    "id": 1268,
    "width": 6,
    "height": 4,
    "file_name": "COCO_val2014_000000001268.jpg",
    "coco_url": "http://images.cocodataset.org/val2017/000000001268.jpg",
    "neg_category_ids": [],
    "not_exhaustive_category_ids": [],
}
CAT = {"id": 1, "name": "cat", "frequency": "f", "synset": "cat.n.01"}
SQUARE = [[0.0, 0.0, 3.0, 0.0, 3.0, 3.0, 0.0, 3.0]]


def _jpg(path: Path, h: int = 4, w: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def test_image_path_rules_follow_detectron2_then_mmdet():
    v1 = {"coco_url": "http://images.cocodataset.org/train2017/000000000139.jpg"}
    assert image_relpaths(v1) == ["train2017/000000000139.jpg"]  # detectron2: coco_url's last two parts
    in_2017 = ["val2017/000000001268.jpg", "train2017/000000001268.jpg", "test2017/000000001268.jpg"]
    assert image_relpaths(V05_IMAGE) == ["val2017/000000001268.jpg", "000000001268.jpg", *in_2017[1:]]
    # mmdet's rule, then detectron2's 2017 folders
    assert image_relpaths({"file_name": "COCO_train2014_000000000009.jpg"})[0] == "000000000009.jpg"
    url_2014 = {
        **V05_IMAGE,
        "coco_url": "http://images.cocodataset.org/val2014/COCO_val2014_000000001268.jpg",
    }
    assert image_relpaths(url_2014) == ["val2014/COCO_val2014_000000001268.jpg", "000000001268.jpg", *in_2017]
    assert image_relpaths({"file_name": "sub/img.png"}) == ["sub/img.png"]


@pytest.mark.parametrize("layout", ["val2017/000000001268.jpg", "000000001268.jpg"])
def test_a_v05_file_finds_its_images_in_either_layout(tmp_path, layout):
    _jpg(tmp_path / "coco" / layout)
    ann = {
        "id": 1,
        "image_id": 1268,
        "category_id": 1,
        "bbox": [0, 0, 3, 3],
        "area": 9,
        "segmentation": SQUARE,
    }
    gt = write_json(
        tmp_path / "lvis_v0.5_val.json", {"images": [V05_IMAGE], "categories": [CAT], "annotations": [ann]}
    )
    data = load_lvis(gt, image_root=tmp_path / "coco", check_images=True)  # every image must exist
    assert data.image_path(1268) == tmp_path / "coco" / layout
    assert find_image(tmp_path / "coco", V05_IMAGE) == tmp_path / "coco" / layout


def test_evaluate_on_a_v05_file_says_v05(tmp_path, capsys, monkeypatch):
    gt = edge_case_gt()
    for img in gt["images"]:
        img.pop("coco_url", None)
        img["file_name"] = f"COCO_val2014_{img['id']:012d}.jpg"
    gt_path = write_json(tmp_path / "lvis_v0.5_val.json", gt)
    res = write_json(tmp_path / "res.json", edge_case_results())
    code, out, err = run_cli(
        ["evaluate", res, "--gt", gt_path, "--out", tmp_path / "m.json"], capsys, monkeypatch
    )
    assert code == 0, err
    assert "LVIS v0.5 metrics" in out and "LVIS v1" not in out
    assert json.loads((tmp_path / "m.json").read_text())["scored"]["lvis_version"] == "v0.5"


def _coco(counts: dict[int, int], crowd_on: int | None = None) -> dict:
    """A COCO instances file: category c annotated on counts[c] images (one instance each)."""
    n_images = max(counts.values())
    images = [
        {
            "id": i,
            "width": 8,
            "height": 8,
            "file_name": f"{i:012d}.jpg",
            "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
        }
        for i in range(1, n_images + 1)
    ]
    anns = []
    for cat, n in counts.items():
        for i in range(1, n + 1):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [0, 0, 3, 3],
                    "area": 9.0,
                    "segmentation": SQUARE,
                    "iscrowd": 0,
                }
            )
    if crowd_on is not None:
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": crowd_on,
                "category_id": 1,
                "bbox": [1, 1, 4, 5],
                "area": 20.0,
                "segmentation": {"size": [8, 8], "counts": [10, 20, 34]},
                "iscrowd": 1,
            }
        )
    cats = [{"id": c, "name": f"thing {c}", "supercategory": "x"} for c in counts]
    return {"images": images, "annotations": anns, "categories": cats}


def test_a_coco_file_is_refused_in_one_line_that_offers_convert(tmp_path, capsys, monkeypatch):
    coco = write_json(tmp_path / "instances_val2017.json", _coco({1: 2, 2: 1}))
    with pytest.raises(LvisctlError) as err:
        load_lvis(coco)
    msg = str(err.value)
    assert "this is a COCO file" in msg and "lvisctl data convert --from coco" in msg and "\n" not in msg
    res = write_json(tmp_path / "res.json", [])
    code, out, stderr = run_cli(["evaluate", res, "--gt", coco], capsys, monkeypatch)
    assert code == 2 and "this is a COCO file" in stderr and len(stderr.strip().splitlines()) == 1


def test_convert_from_coco_gives_an_lvis_file_with_lvis_frequency_thresholds(tmp_path, capsys, monkeypatch):
    assert [frequency_of(n) for n in (0, 1, 10, 11, 100, 101)] == ["r", "r", "r", "c", "c", "f"]
    src = write_json(tmp_path / "instances_train2017.json", _coco({1: 10, 2: 11, 3: 100, 4: 101}, crowd_on=3))
    out = tmp_path / "lvis_coco_train.json"
    code, stdout, err = run_cli(["data", "convert", "--from", "coco", src, out], capsys, monkeypatch)
    assert code == 0, err
    data = load_lvis(out)  # a valid LVIS file now
    assert [data.categories[c]["frequency"] for c in (1, 2, 3, 4)] == ["r", "c", "c", "f"]
    assert data.categories[4]["image_count"] == 101 and data.categories[4]["instance_count"] == 101
    assert all(
        img["neg_category_ids"] == [] == img["not_exhaustive_category_ids"] for img in data.images.values()
    )
    assert data.num_annotations == 10 + 11 + 100 + 101  # the crowd region is not an instance
    assert data.image_path(5) == tmp_path / "train2017" / "000000000005.jpg"  # coco_url kept
    ignore = load_missing_annotations(tmp_path / "lvis_coco_train.crowd.json")
    assert ignore == {3: [[1.0, 1.0, 5.0, 6.0]]}  # crowd as an XYXY ignore box (data.pseudo_labels)
    assert "r/c/f 1/2/1" in stdout and "1 crowd regions" in stdout
    # never replaced silently
    code, _, err = run_cli(["data", "convert", "--from", "coco", src, out], capsys, monkeypatch)
    assert code == 2 and "--overwrite" in err
