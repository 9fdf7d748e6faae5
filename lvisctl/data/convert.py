"""``lvisctl data convert --from coco IN OUT``: a COCO instances json as an LVIS file.

* images keep their records (``coco_url`` / ``file_name``) and get empty ``neg_category_ids`` /
  ``not_exhaustive_category_ids``: COCO labels every category exhaustively, so nothing is federated.
* categories get LVIS's ``frequency`` from their image counts with the LVIS thresholds (rare 1-10,
  common 11-100, frequent > 100 images; Gupta et al. 2019), ``image_count`` / ``instance_count``, and
  ``synonyms`` / ``synset`` / ``def`` from the name. A category with no image counts as rare.
* crowd regions (``iscrowd: 1``) leave the annotations (LVIS has no crowd) and become ignore boxes: a
  missing-mode pseudo-label file ``<OUT stem>.crowd.json`` next to OUT, for ``data.pseudo_labels``
  (proposals overlapping them are not sampled as background, ``model.roi_heads.ignore_iou``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError, raise_problems
from lvisctl.rundir.io import atomic_write_json, read_json

RARE_MAX, COMMON_MAX = 10, 100  # LVIS: r = 1-10 images, c = 11-100, f = > 100


@dataclass
class ConvertReport:
    out: Path
    crowd_out: Path | None
    images: int
    annotations: int
    crowd: int
    frequencies: dict[str, int]


def frequency_of(image_count: int) -> str:
    """LVIS's frequency group of a category seen in ``image_count`` training images."""
    if image_count <= RARE_MAX:
        return "r"
    return "c" if image_count <= COMMON_MAX else "f"


def crowd_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.crowd.json")


def convert_coco(src: Path, out: Path, *, overwrite: bool = False) -> ConvertReport:
    """Write ``out`` (LVIS) and, when ``src`` has crowd regions, ``<out stem>.crowd.json``."""
    payload = read_json(src, expect=dict, what="a COCO instances json")
    images, categories, anns = _coco_lists(src, payload)
    crowd_out = crowd_path(out)
    for target in (out, crowd_out):
        if target.exists() and not overwrite:
            raise LvisctlError(f"{target}: exists; pass --overwrite to replace it")
    kept = [a for a in anns if not a.get("iscrowd")]
    crowd = [a for a in anns if a.get("iscrowd")]
    lvis_cats = _lvis_categories(categories, kept)
    lvis_images = [{**img, "neg_category_ids": [], "not_exhaustive_category_ids": []} for img in images]
    info = {**(payload.get("info") or {}), "converted_from": f"COCO {src.name} (lvisctl data convert)"}
    result = {"info": info, "licenses": payload.get("licenses") or [], "images": lvis_images}
    result.update(categories=lvis_cats, annotations=[{**a, "iscrowd": 0} for a in kept])
    atomic_write_json(out, result, indent=None)
    if crowd:
        note = f"crowd regions of {src.name}"
        ignore = {"info": {"pseudo_label_source": "missing", "converted_from": note}}
        ignore.update(images=[], categories=lvis_cats, annotations=[_crowd_box(a) for a in crowd])
        atomic_write_json(crowd_out, ignore, indent=None)
    counts: dict[str, int] = defaultdict(int)
    for cat in lvis_cats:
        counts[cat["frequency"]] += 1
    return ConvertReport(out, crowd_out if crowd else None, len(images), len(kept), len(crowd), dict(counts))


def _coco_lists(src: Path, payload: dict) -> tuple[list[dict], list[dict], list[dict]]:
    problems: list[str] = []
    lists = []
    for key in ("images", "categories", "annotations"):
        value = payload.get(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            problems.append(f"top-level '{key}' must be a list of objects")
            value = []
        lists.append(value)
    images, categories, anns = lists
    if any("frequency" in c for c in categories):
        problems.append("categories already carry LVIS frequencies: this is an LVIS file, not COCO")
    cat_ids = {c.get("id") for c in categories}
    image_ids = {i.get("id") for i in images}
    for ann in anns:
        if ann.get("image_id") not in image_ids or ann.get("category_id") not in cat_ids:
            problems.append(f"annotation {ann.get('id')}: unknown image_id or category_id")
        elif not ann.get("iscrowd") and not ann.get("segmentation"):
            problems.append(f"annotation {ann.get('id')}: no segmentation")
    raise_problems(src, problems, max_listed=5)
    return images, categories, anns


def _lvis_categories(categories: list[dict], anns: list[dict]) -> list[dict]:
    images_of: dict[int, set[int]] = defaultdict(set)
    instances: dict[int, int] = defaultdict(int)
    for ann in anns:
        images_of[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    out = []
    for cat in sorted(categories, key=lambda c: c["id"]):
        name = str(cat.get("name", cat["id"])).replace(" ", "_")
        n_images = len(images_of[cat["id"]])
        out.append(
            {
                **cat,
                "name": name,
                "synonyms": cat.get("synonyms") or [name],
                "synset": cat.get("synset") or f"{name}.n.01",
                "def": cat.get("def") or "",
                "image_count": n_images,
                "instance_count": instances[cat["id"]],
                "frequency": frequency_of(n_images),
            }
        )
    return out


def _crowd_box(ann: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "image_id", "category_id", "bbox", "area")
    return {**{k: ann[k] for k in keys if k in ann}, "score": 1.0}
