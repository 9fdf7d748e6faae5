"""Synthetic LVIS: the r/c/f rule, exact masks under occlusion, LVIS v1 format, determinism, atomicity."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lvisctl.data import synth
from lvisctl.data.lvis import ann_to_mask, load_lvis
from lvisctl.data.synth import (
    PRESETS,
    THIN_SHAPES,
    frequency_tag,
    frequency_thresholds,
    generate_synthetic_lvis,
    loop_area,
    trace_loops,
)
from lvisctl.errors import LvisctlError

IMAGE_KEYS = {
    "id",
    "width",
    "height",
    "coco_url",
    "flickr_url",
    "license",
    "date_captured",
    "neg_category_ids",
    "not_exhaustive_category_ids",
}
ANN_KEYS = {"id", "image_id", "category_id", "segmentation", "area", "bbox"}
CAT_KEYS = {"id", "name", "synset", "synonyms", "def", "frequency", "image_count", "instance_count"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return generate_synthetic_lvis(out, preset="tiny", seed=3, train_images=60)


def _raw(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------- rule
@pytest.mark.parametrize(
    ("n", "expected"),
    [(48, (1, 5)), (500, (5, 50)), (1000, (10, 100)), (1200, (10, 100)), (100_170, (10, 100)), (5, (1, 2))],
)
def test_frequency_thresholds(n, expected):
    # below 1000 images: rare_max = max(1, round(10 n / 1000)),
    # common_max = max(rare_max + 1, round(100 n / 1000)); e.g. n=48: (max(1, 0), max(2, 5))
    assert frequency_thresholds(n) == expected


def test_frequency_tag_bins_like_lvis():
    t = (10, 100)
    assert [frequency_tag(n, t) for n in (0, 1, 10, 11, 100, 101, 5000)] == [
        "r",
        "r",
        "r",
        "c",
        "c",
        "f",
        "f",
    ]


# ---------------------------------------------------------------------------------------- tracing
def _raster(loops: list[np.ndarray], h: int, w: int) -> np.ndarray:
    rles = mask_utils.frPyObjects([lp.ravel().tolist() for lp in loops], h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def test_trace_single_pixel_and_hole():
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    (loop,) = trace_loops(one)
    assert loop.tolist() == [[1, 1], [2, 1], [2, 2], [1, 2]] and loop_area(loop) == 1
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    areas = sorted(loop_area(lp) for lp in trace_loops(ring))
    assert areas == [-1, 9]  # the hole runs the other way


def test_trace_diagonal_pixels_are_separate_pieces():
    diag = np.eye(2, dtype=bool)
    loops = trace_loops(diag)
    assert len(loops) == 2 and all(loop_area(lp) == 1 and len(lp) == 4 for lp in loops)


def test_traced_polygons_rasterise_to_the_same_pixels():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        mask = rng.random((9, 11)) < 0.55
        loops = trace_loops(mask)
        if any(loop_area(lp) < 0 for lp in loops):
            continue  # holes cannot be COCO polygons; synth rejects such placements
        assert np.array_equal(_raster(loops, 9, 11), mask)
        assert sum(loop_area(lp) for lp in loops) == mask.sum()
        checked += 1
    assert checked >= 10


# ---------------------------------------------------------------------------------------- one image
def test_occluded_annotations_match_painted_pixels_exactly():
    """Dense scene: every object's annotation decodes to the pixels where its colour shows."""
    cfg = replace(PRESETS["tiny"], max_objects=12, unverified_prob=0.0, not_exhaustive_prob=0.0)
    rng = np.random.default_rng(1)
    cats = synth._make_categories(cfg, rng, None)
    occluded = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        h, w, objs, _, _ = synth._make_image(list(range(6)), cats, cfg, rng)
        img = synth._paint(h, w, objs, cats, rng)
        for obj in objs:
            ann = synth._annotation(obj)
            full = np.zeros((h, w), bool)
            full[obj.y0 : obj.y0 + obj.vis.shape[0], obj.x0 : obj.x0 + obj.vis.shape[1]] = obj.vis
            mask = ann_to_mask({"segmentation": ann["segmentation"]}, h, w).astype(bool)
            assert np.array_equal(mask, full) and ann["area"] == full.sum()
            assert (
                ann["bbox"]
                == mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))).tolist()
            )
            if cats[obj.cat].texture == "solid":
                colors = np.unique(img[mask], axis=0)
                assert len(colors) == 1  # only this object's colour where it is annotated
            occluded += int(not np.array_equal(obj.vis, obj.full))
    assert occluded >= 3


def test_thin_shapes_have_small_mask_box_ratio():
    rng = np.random.default_rng(0)
    for shape in synth.SHAPES:
        ratios = []
        for _ in range(20):
            polys, _ = synth._shape_polys(shape, 40.0, rng)
            pts = np.concatenate(polys) + 50
            m = synth._rasterize([np.round(p + 50, 2) for p in polys], 0, 0, 100, 100)
            span = np.ptp(pts, axis=0) + 1
            ratios.append(m.sum() / (span[0] * span[1]))
        if shape in THIN_SHAPES:
            assert max(ratios) < 0.25, shape
        else:
            assert min(ratios) > 0.3, shape


# ---------------------------------------------------------------------------------------- dataset
def test_layout_and_exact_lvis_v1_records(tiny):
    root = tiny["root"]
    assert sorted(p.name for p in root.iterdir()) == [
        ".lvisctl-synth.json",  # what it wrote: the files --overwrite may replace
        "lvis_v1_image_info_test_dev.json",
        "lvis_v1_image_info_unlabeled.json",
        "lvis_v1_train.json",
        "lvis_v1_val.json",
        "test2017",
        "train2017",
        "unlabeled2017",
        "val2017",
    ]
    train = _raw(tiny["train"])
    assert set(train) == {"info", "licenses", "images", "annotations", "categories"}
    assert all(set(i) == IMAGE_KEYS for i in train["images"])
    assert all(set(a) == ANN_KEYS and isinstance(a["segmentation"], list) for a in train["annotations"])
    assert all(set(c) == CAT_KEYS for c in train["categories"])
    img = train["images"][0]
    assert img["coco_url"] == f"http://images.cocodataset.org/train2017/{img['id']:012d}.jpg"
    assert (root / "train2017" / f"{img['id']:012d}.jpg").is_file()
    for key in ("test_info", "unlabeled"):
        info = _raw(tiny[key])
        assert set(info) == {"info", "licenses", "images", "categories"} and len(info["images"]) == 8
        assert all(
            set(i) == IMAGE_KEYS - {"neg_category_ids", "not_exhaustive_category_ids"} for i in info["images"]
        )
    ids = [i["id"] for k in ("train", "val", "test_info", "unlabeled") for i in _raw(tiny[k])["images"]]
    assert len(ids) == len(set(ids)) == 60 + 16 + 8 + 8  # ids unique across splits


def test_loads_with_our_loader_and_images_exist(tiny):
    for key in ("train", "val", "test_info", "unlabeled"):
        data = load_lvis(tiny[key], check_images=True)
        assert len(data.images) > 0


def test_frequency_tags_follow_the_rule_from_train_counts(tiny):
    train = load_lvis(tiny["train"])
    stats = train.category_stats()
    thresholds = frequency_thresholds(60)  # (1, 6)
    assert thresholds == (1, 6)
    assert list(stats.frequency) == [frequency_tag(int(n), thresholds) for n in stats.image_count]
    records = [train.categories[c] for c in stats.category_map.cat_ids]
    assert [r["image_count"] for r in records] == stats.image_count.tolist()
    assert [r["instance_count"] for r in records] == stats.instance_count.tolist()
    assert set(stats.frequency) == {"r", "c", "f"}
    val = load_lvis(tiny["val"])
    rare_in_val = {
        a["category_id"] for a in val.annotations() if val.categories[a["category_id"]]["frequency"] == "r"
    }
    assert rare_in_val, "val must contain rare categories so APr is defined"


def test_federated_labels_are_consistent(tiny):
    data = load_lvis(tiny["train"])
    for img_id, img in data.images.items():
        present = {a["category_id"] for a in data.anns_by_image[img_id]}
        assert not present & set(img["neg_category_ids"])
        assert set(img["not_exhaustive_category_ids"]) <= present
    assert sum(len(i["neg_category_ids"]) > 0 for i in data.images.values()) == len(data.images)


def test_thin_categories_have_small_ratio_in_the_data(tiny):
    data = load_lvis(tiny["train"])
    shape_of = {c["id"]: c["def"] for c in data.categories.values()}
    thin, solid = [], []
    for a in data.annotations():
        ratio = a["area"] / (a["bbox"][2] * a["bbox"][3])
        is_thin = any(s.replace("_", " ") in shape_of[a["category_id"]] for s in THIN_SHAPES)
        (thin if is_thin else solid).append(ratio)
    assert thin and np.median(thin) < 0.25 and np.median(solid) > 0.4


def _lvis_api():
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # lvis.vis imports cv2, not needed here
    if not hasattr(np, "float"):
        np.float = float  # lvis 0.5.3 uses np.float, removed in numpy 1.24
    from lvis import LVIS, LVISEval, LVISResults

    return LVIS, LVISEval, LVISResults


def test_lvis_api_and_pycocotools_load_it_and_gt_scores_ap_one(tiny):
    from pycocotools.coco import COCO

    LVIS, LVISEval, LVISResults = _lvis_api()
    gt = LVIS(str(tiny["val"]))
    assert len(gt.get_img_ids()) == 16 and len(gt.get_cat_ids()) == 8
    coco = COCO(str(tiny["val"]))
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert coco.annToMask(ann).sum() == ann["area"]
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
         "segmentation": a["segmentation"]}
        for a in gt.dataset["annotations"]
    ]  # fmt: skip
    ev = LVISEval(gt, LVISResults(gt, dets), iou_type="segm")
    ev.run()
    assert ev.results["AP"] == pytest.approx(1.0)


def test_deterministic_by_seed(tmp_path):
    kw = {"preset": "tiny", "write_images": False}
    a = generate_synthetic_lvis(tmp_path / "a", seed=5, **kw)
    b = generate_synthetic_lvis(tmp_path / "b", seed=5, **kw)
    c = generate_synthetic_lvis(tmp_path / "c", seed=6, **kw)
    assert (
        a["train"].read_bytes() == b["train"].read_bytes() and a["val"].read_bytes() == b["val"].read_bytes()
    )
    assert a["train"].read_bytes() != c["train"].read_bytes()
    assert not (tmp_path / "a" / "train2017").exists()  # --no-images writes only the jsons


def test_real_categories_keep_lvis_ids_and_names(tmp_path):
    table = {c["id"]: c for c in json.loads(synth.REAL_CATEGORIES_FILE.read_text())}
    paths = generate_synthetic_lvis(tmp_path / "r", preset="tiny", write_images=False, real_categories=True)
    cats = _raw(paths["train"])["categories"]
    assert len(cats) == 8 and all(table[c["id"]]["name"] == c["name"] for c in cats)
    assert [c["id"] for c in cats] != list(range(1, 9))


def test_refuses_to_overwrite_and_failed_run_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(LvisctlError, match="already exists and is not empty; pass --overwrite"):
        generate_synthetic_lvis(out, preset="tiny")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_category_records", boom)  # fails after all images were written
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        generate_synthetic_lvis(fresh, preset="tiny")
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(LvisctlError, match="unknown preset"):
        generate_synthetic_lvis(tmp_path / "x", preset="huge")
    with pytest.raises(LvisctlError, match="--train-images 0: must be at least 1"):
        generate_synthetic_lvis(tmp_path / "x", preset="tiny", train_images=0)
    with pytest.raises(LvisctlError, match="category table not found"):
        generate_synthetic_lvis(tmp_path / "x", preset="tiny", categories_file=tmp_path / "none.json")


def test_demo_preset_long_tail(tmp_path):
    """The README demo's data: 30 categories, 6 f / 14 c / 10 r, rare ones in val, 1-6 objects, >= 12 px."""
    paths = generate_synthetic_lvis(tmp_path / "demo", preset="demo", write_images=False)
    train, val = load_lvis(paths["train"]), load_lvis(paths["val"])
    tags = Counter(c["frequency"] for c in train.categories.values())
    assert tags == {"f": 6, "c": 14, "r": 10}
    rare = {c for c, r in train.categories.items() if r["frequency"] == "r"}
    assert rare <= {a["category_id"] for a in val.annotations()}  # every rare category is evaluated
    per_image = [len(a) for a in train.anns_by_image.values()]
    assert min(per_image) >= 1 and max(per_image) <= 6
    sizes = np.array([max(a["bbox"][2:]) for a in train.annotations()])
    assert np.mean(sizes >= 12) > 0.9
