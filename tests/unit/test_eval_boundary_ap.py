"""Boundary AP: the boundary band, boundary IoU and AP on hand-computed cases; the federated engine
it runs on is checked against lvis-api with plain mask IoU."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from lvisctl.evaluation.boundary_ap import (
    boundary_ap,
    boundary_iou_fn,
    boundary_width,
    gt_with_rles,
    mask_boundary,
)
from lvisctl.evaluation.federated_eval import federated_eval
from lvisctl.evaluation.lvis_metrics import load_ground_truth
from tests.helpers.eval_cases import (
    api_iou,
    api_mask_to_boundary,
    blob_case,
    edge_case_gt,
    edge_case_results,
    random_case,
)
from tests.helpers.lvis_reference import (
    det_rect,
    gt_rect,
    lvis_api_metrics,
    lvis_category,
    lvis_dataset,
    lvis_image,
    rect_rle,
    write_json,
)


def test_boundary_width_rounds_two_percent_of_the_diagonal():
    assert boundary_width(64, 64) == 2  # 0.02 * 90.5 = 1.81
    assert boundary_width(480, 640) == 16  # 0.02 * 800
    assert boundary_width(10, 10) == 1  # 0.28 rounds to 0, floored at 1


def test_mask_boundary_band_and_image_border():
    m = np.zeros((10, 10), np.uint8)
    m[2:8, 2:8] = 1
    band = mask_boundary(m, 1)
    assert band.sum() == 36 - 16  # a 6x6 square minus its 4x4 interior
    assert band[4:6, 4:6].sum() == 0 and band[2, 2:8].all()
    corner = np.zeros((10, 10), np.uint8)
    corner[0:6, 0:6] = 1
    assert mask_boundary(corner, 1).sum() == 20  # the image border counts as contour


def test_boundary_iou_of_shifted_square():
    """20x20 squares one pixel apart, d = 2 (64x64 image).

    Mask IoU = 380 / 420. Bands hold 400 - 16^2 = 144 px each; they overlap in 19 px on each of the 4
    top/bottom band rows and 2 px on each of the 16 middle rows: 108, so boundary IoU = 108/180 = 0.6.
    """
    gt = {"segmentation": rect_rle(10, 10, 20, 20, 64, 64)}
    dt = {"segmentation": rect_rle(11, 10, 20, 20, 64, 64)}
    iou = boundary_iou_fn()([dt], [gt])
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(0.6)
    mask_iou = mask_utils.iou([dt["segmentation"]], [gt["segmentation"]], [0])[0, 0]
    assert mask_iou == pytest.approx(380 / 420)


def _setup(tmp_path, anns, dets, images):
    cats = {1: {"name": "a", "frequency": "f"}}
    gt_path = write_json(tmp_path / "gt.json", lvis_dataset(images, anns, [lvis_category(1, "f")]))
    gt = load_ground_truth(gt_path)
    imgs = {i["id"]: i for i in images}
    return gt, imgs, cats, gt_path


def test_boundary_ap_hand_computed(tmp_path):
    """Two GT squares; det A exact (0.9), det B shifted 2 px (0.8).

    B: mask IoU 360/440 = 0.818, boundary IoU 72/216 = 1/3. Mask AP: B is a TP at the 7 thresholds
    <= 0.8 (AP 1) and a FP at 0.85-0.95 where precision is 1 up to recall 0.5 (51 of 101 recall points):
    (7 + 3 * 51/101) / 10. Boundary AP: B never matches, 51/101 at every threshold.
    """
    images = [lvis_image(1), lvis_image(2)]
    anns = [gt_rect(1, 1, 1, 10, 10, 20, 20), gt_rect(2, 2, 1, 10, 10, 20, 20)]
    dets = [det_rect(1, 1, 0.9, 10, 10, 20, 20), det_rect(2, 1, 0.8, 12, 10, 20, 20)]
    gt, imgs, cats, gt_path = _setup(tmp_path, anns, dets, images)
    gts = gt_with_rles(gt.coco)
    res, per_cat = boundary_ap(imgs, cats, gts, dets)
    assert res["AP"] == pytest.approx(51 / 101)
    assert per_cat[1] == pytest.approx(51 / 101)
    mask_res, _ = federated_eval(imgs, cats, gts, dets, _mask_iou)
    assert mask_res["AP"] == pytest.approx((7 + 3 * 51 / 101) / 10)
    assert mask_res["AP"] == pytest.approx(lvis_api_metrics(gt_path, dets, "segm")["AP"], abs=1e-9)


def _mask_iou(dts, gts):
    return np.asarray(
        mask_utils.iou([d["segmentation"] for d in dts], [g["segmentation"] for g in gts], [0] * len(gts))
    ).reshape(len(dts), len(gts))


@pytest.mark.parametrize("case", ["edge", "random"])
def test_federated_engine_matches_lvis_api_with_mask_iou(tmp_path, case):
    if case == "edge":
        data, dets = edge_case_gt(), edge_case_results()
    else:
        data, dets = random_case(3, num_images=25)
    gt_path = write_json(tmp_path / "gt.json", data)
    gt = load_ground_truth(gt_path)
    imgs = {i["id"]: i for i in json.loads(open(gt_path).read())["images"]}
    res, _ = federated_eval(imgs, gt.categories, gt_with_rles(gt.coco), dets, _mask_iou)
    ref = lvis_api_metrics(gt_path, dets, "segm")
    for key, value in ref.items():
        assert res[key] == pytest.approx(value, abs=1e-6), key


# ------------------------------------------------------------------ against the Boundary IoU API itself


@pytest.mark.parametrize("case", ["edge", "random", "blobs"])
def test_boundary_ap_exact_against_the_api_definition(tmp_path, case):
    """The fast Boundary AP (crops, boundaries only where mask IoU >= 0.5) gives the same numbers, to
    the last bit, as the API's definition computed for every pair on the whole image."""
    data, dets = {
        "edge": lambda: (edge_case_gt(), edge_case_results()),
        "random": lambda: random_case(5, num_images=25),
        "blobs": lambda: blob_case(0),
    }[case]()
    gt_path = write_json(tmp_path / "gt.json", data)
    gt = load_ground_truth(gt_path)
    imgs = {i["id"]: i for i in data["images"]}
    gts = gt_with_rles(gt.coco)
    fast, fast_per_cat = boundary_ap(imgs, gt.categories, gts, dets)
    ref, ref_per_cat = federated_eval(imgs, gt.categories, gts, dets, api_iou)
    assert fast == ref
    assert fast_per_cat == pytest.approx(ref_per_cat, nan_ok=True, abs=0)
    assert ref["AP"] > 0  # the case exercises matches


def test_boundary_band_equals_the_api_band_on_blobs():
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = int(rng.integers(5, 90)), int(rng.integers(5, 90))
        m = (rng.uniform(size=(h, w)) > 0.3).astype(np.uint8)
        d = boundary_width(h, w)
        assert np.array_equal(mask_boundary(m, d), api_mask_to_boundary(m))


def test_decode_crop_equals_a_window_of_the_full_decode():
    from lvisctl.evaluation.boundary_ap import decode_crop, rle_counts

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        m = (rng.uniform(size=(h, w)) > rng.uniform()).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
        assert np.array_equal(decode_crop(rle["counts"], h, x0, y0, x1, y1), m[y0:y1, x0:x1])
        assert rle_counts(rle["counts"]).sum() == h * w
