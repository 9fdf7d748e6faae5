"""The record checks of an LVIS file: required keys and types, unique ids, annotations on known images and
categories, boxes, polygons and RLE against their image. Each check appends one-line problems to a list;
``lvisctl.data.lvis.load_lvis`` raises them together."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lvisctl.data.lvis_records import FREQUENCIES, LvisData, is_int, rle_problem

ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox")
IMAGE_KEYS = ("id", "width", "height")
LVIS_IMAGE_LABEL_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")
CATEGORY_KEYS = ("id", "name")


def index_records(data: LvisData, images: list, categories: list, annotations: list) -> list[str]:
    """Fill ``data``'s dicts from the raw records; return the per-record and duplicate-id problems."""
    problems: list[str] = []
    for img in images:
        if _check_image(img, data.has_annotations, problems):
            _add_unique(data.images, img, "image", problems)
    for cat in categories:
        if _check_category(cat, data.has_annotations, problems):
            _add_unique(data.categories, cat, "category", problems)
    data.anns_by_image = {img_id: [] for img_id in data.images}
    ann_ids: set[int] = set()
    for ann in annotations:
        if not _check_annotation(ann, problems):
            continue
        if ann["id"] in ann_ids:
            problems.append(f"duplicate annotation id {ann['id']}")
        ann_ids.add(ann["id"])
        if ann["image_id"] not in data.images:
            problems.append(f"annotation {ann['id']}: image_id {ann['image_id']} is not in 'images'")
            continue
        if ann["category_id"] not in data.categories:
            problems.append(f"annotation {ann['id']}: category_id {ann['category_id']} not in 'categories'")
        data.anns_by_image[ann["image_id"]].append(ann)
    problems.extend(_label_problems(data))
    return problems


def _add_unique(table: dict[int, dict], record: dict, what: str, problems: list[str]) -> None:
    if record["id"] in table:
        problems.append(f"duplicate {what} id {record['id']}")
    table[record["id"]] = record


def _missing(record: Any, keys: tuple[str, ...], what: str, problems: list[str]) -> bool:
    if not isinstance(record, dict):
        problems.append(f"{what} record is not an object: {str(record)[:40]}")
        return True
    absent = [k for k in keys if k not in record]
    if absent:
        problems.append(f"{what} {record.get('id', '?')}: missing key(s) {', '.join(absent)}")
    return bool(absent)


def _check_image(img: Any, labelled: bool, problems: list[str]) -> bool:
    keys = IMAGE_KEYS + (LVIS_IMAGE_LABEL_KEYS if labelled else ())
    if _missing(img, keys, "image", problems):
        return False
    ok = is_int(img["id"])
    if not ok:
        problems.append(f"image {img['id']!r}: id must be an integer")
    if not (is_int(img["width"]) and is_int(img["height"]) and img["width"] > 0 and img["height"] > 0):
        problems.append(f"image {img['id']}: width/height must be positive integers")
        ok = False
    if not img.get("coco_url") and not img.get("file_name"):
        problems.append(f"image {img['id']}: needs coco_url or file_name to locate the file")
    for key in LVIS_IMAGE_LABEL_KEYS:
        if key in img and not (isinstance(img[key], list) and all(is_int(c) for c in img[key])):
            problems.append(f"image {img['id']}: {key} must be a list of category ids")
            img[key] = []
    return ok


def _check_category(cat: Any, labelled: bool, problems: list[str]) -> bool:
    keys = CATEGORY_KEYS + (("frequency",) if labelled else ())
    if _missing(cat, keys, "category", problems):
        return False
    if not is_int(cat["id"]):
        problems.append(f"category {cat['id']!r}: id must be an integer")
        return False
    if "frequency" in cat and cat["frequency"] not in FREQUENCIES:
        problems.append(f"category {cat['id']}: frequency {cat['frequency']!r} is not one of r, c, f")
    return True


def _check_annotation(ann: Any, problems: list[str]) -> bool:
    if _missing(ann, ANNOTATION_KEYS, "annotation", problems):
        return False
    if not all(is_int(ann[k]) for k in ("id", "image_id", "category_id")):
        problems.append(f"annotation {ann['id']}: id, image_id and category_id must be integers")
        return False
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        problems.append(f"annotation {ann['id']}: bbox must be 4 numbers [x, y, w, h]")
    elif not (all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0):
        problems.append(f"annotation {ann['id']}: degenerate bbox {box} (width and height must be > 0)")
    problem = _segmentation_problem(ann["segmentation"])
    if problem:
        problems.append(f"annotation {ann['id']}: {problem}")
    return True


def _segmentation_problem(seg: Any) -> str | None:
    if isinstance(seg, list):
        if not seg:
            return "empty segmentation"
        for poly in seg:
            if not isinstance(poly, np.ndarray) or poly.ndim != 1:
                return "segmentation is not a list of number lists"
            if poly.size < 6 or poly.size % 2:
                return f"degenerate polygon with {poly.size} coordinates (needs an even number >= 6)"
            if not np.isfinite(poly).all():
                return "polygon has a coordinate that is not a finite number"
        return None
    if isinstance(seg, dict) and "size" in seg and "counts" in seg:
        return None
    return "segmentation must be a polygon list or an RLE dict with size and counts"


def _label_problems(data: LvisData) -> list[str]:
    """Federated labels: neg/not-exhaustive ids must be known, and a negative may not be annotated."""
    problems: list[str] = []
    for img_id, img in data.images.items():
        listed = set(img.get("neg_category_ids", [])) | set(img.get("not_exhaustive_category_ids", []))
        unknown = sorted(c for c in listed if c not in data.categories)
        if unknown:
            problems.append(f"image {img_id}: neg/not-exhaustive category ids {unknown[:5]} unknown")
        anns = data.anns_by_image.get(img_id, [])
        both = sorted({a["category_id"] for a in anns} & set(img.get("neg_category_ids", [])))
        if both:
            problems.append(f"image {img_id}: categories {both[:5]} annotated but in neg_category_ids")
        for ann in anns:
            problems.extend(_annotation_on_image_problems(ann, img))
    return problems


def _annotation_on_image_problems(ann: dict, img: dict) -> list[str]:
    """Checks of an annotation against its image's size: RLE runs, a box entirely outside the image."""
    out: list[str] = []
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        problem = rle_problem(seg, img["height"], img["width"])
        if problem:
            out.append(f"annotation {ann['id']}: {problem}")
    elif isinstance(seg, list) and seg and _far_outside(seg, img["height"], img["width"]):
        out.append(
            f"annotation {ann['id']}: polygon coordinates lie far outside its {img['width']}x{img['height']} "
            f"image (up to {_largest(seg):g})"
        )
    box = ann["bbox"]
    if isinstance(box, list) and len(box) == 4 and all(_is_number(v) and math.isfinite(v) for v in box):
        x, y, w, h = box
        if w > 0 and h > 0 and (x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0):
            out.append(
                f"annotation {ann['id']}: bbox {box} lies entirely outside its "
                f"{img['width']}x{img['height']} image"
            )
    return out


def _far_outside(polygons: list, h: int, w: int) -> bool:
    """A coordinate more than an image side beyond the image (a 1e9, a swapped x/y of a huge image):
    slightly outside is common in real annotations and harmless, this is not. One reduction per
    annotation (1.3 M of them in LVIS train)."""
    return _largest(polygons) > 2 * max(h, w)


def _largest(polygons: list) -> float:
    coords = polygons[0] if len(polygons) == 1 else np.concatenate(polygons)
    return float(np.abs(coords).max())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
