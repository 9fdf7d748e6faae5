"""lvis-api 0.5.3, the official LVIS evaluator, as the reference that tests and the benchmark compare to.

lvis-api calls ``np.float``, which numpy 1.24 removed; the shim below restores the alias for this process
only, and a stand-in ``cv2`` module lets ``import lvis`` succeed without OpenCV. This module is
test/benchmark tooling: the product's evaluator is ``lvisctl.evaluation``.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import types
from typing import Any

import numpy as np

if not hasattr(np, "float"):
    np.float = float  # type: ignore[attr-defined]  # lvis-api 0.5.3 uses the removed alias
try:  # lvis/__init__ imports its visualiser, which needs OpenCV; evaluation never touches it
    import cv2  # noqa: F401
except ImportError:
    sys.modules["cv2"] = types.ModuleType("cv2")

from lvis import LVIS, LVISEval, LVISResults  # noqa: E402

logging.getLogger("lvis").setLevel(logging.ERROR)

METRIC_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "APr",
    "APc",
    "APf",
    "AR@300",
    "ARs@300",
    "ARm@300",
    "ARl@300",
)


def lvis_api_metrics(
    gt: str | os.PathLike[str], results: list[dict[str, Any]] | str | os.PathLike[str], iou_type: str
) -> dict[str, float]:
    """The 13 official numbers lvis-api reports for ``results`` (a list or a json path) on ``gt``."""
    lvis_gt = LVIS(str(gt))
    res = str(results) if isinstance(results, (str, os.PathLike)) else copy.deepcopy(results)
    lvis_dt = LVISResults(lvis_gt, res, max_dets=300)
    ev = LVISEval(lvis_gt, lvis_dt, iou_type=iou_type)
    ev.run()
    return {k: float(v) for k, v in ev.get_results().items()}


# ----------------------------------------------------------------------------- tiny hand-made data
def rect_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    """A rectangle as an LVIS GT polygon (pixel-aligned, so its raster is exactly w*h pixels)."""
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def rect_rle(x: int, y: int, w: int, h: int, height: int, width: int) -> dict[str, Any]:
    """Compressed RLE (str counts, as results files hold) of a filled rectangle."""
    import pycocotools.mask as mask_utils

    m = np.zeros((height, width), dtype=np.uint8, order="F")
    m[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(m)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def lvis_image(img_id: int, height: int = 64, width: int = 64, neg=(), not_exhaustive=()) -> dict[str, Any]:
    return {
        "id": img_id,
        "height": height,
        "width": width,
        "coco_url": f"http://images.cocodataset.org/val2017/{img_id:012d}.jpg",
        "neg_category_ids": list(neg),
        "not_exhaustive_category_ids": list(not_exhaustive),
    }


def lvis_category(cat_id: int, frequency: str) -> dict[str, Any]:
    return {"id": cat_id, "name": f"cat{cat_id}", "synset": f"cat{cat_id}.n.01", "frequency": frequency}


def gt_rect(ann_id: int, img_id: int, cat_id: int, x: int, y: int, w: int, h: int) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": img_id,
        "category_id": cat_id,
        "segmentation": rect_polygon(x, y, w, h),
        "area": float(w * h),
        "bbox": [float(x), float(y), float(w), float(h)],
    }


def det_rect(
    img_id: int, cat_id: int, score: float, x: int, y: int, w: int, h: int, height: int = 64, width: int = 64
) -> dict[str, Any]:
    """A detection whose box and mask are the same rectangle."""
    return {
        "image_id": img_id,
        "category_id": cat_id,
        "bbox": [float(x), float(y), float(w), float(h)],
        "score": score,
        "segmentation": rect_rle(x, y, w, h, height, width),
    }


def without_bbox(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``results`` without ``bbox`` (what tta-infer's segm file holds): lvis-api then takes mask
    areas for the segm area ranges."""
    return [{k: v for k, v in det.items() if k != "bbox"} for det in results]


def lvis_dataset(images, annotations, categories) -> dict[str, Any]:
    return {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_json(path, obj) -> str:
    import json
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh)
    return str(path)
