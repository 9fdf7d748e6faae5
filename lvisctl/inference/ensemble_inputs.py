"""``lvisctl ensemble``'s inputs: results files read, checked and turned into per-image detections.

A ``tta-infer`` pair (``X.segm.json`` + ``X.bbox.json``) is joined record by record; a single full results
file needs RLE ``segmentation``. Every file passes ``evaluate``'s validator first
(:mod:`lvisctl.inference.ensemble_checks`); the image sets and mask sizes of all inputs must agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_utils
import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.errors import LvisctlError
from lvisctl.inference.ensemble_checks import check_results_files
from lvisctl.inference.results import is_empty_mask, split_paths


@dataclass
class ResultsInput:
    """One ``lvisctl ensemble`` input: full records (box and mask) grouped by image."""

    path: Path  # as given
    files: list[Path]  # the files read (a tta-infer .segm.json / .bbox.json pair, or one full file)
    by_image: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)


def _pair_of(path: Path) -> dict[str, Path] | None:
    """The tta-infer pair a path names (``X.segm.json``, ``X.bbox.json`` or ``X.json``), if both exist."""
    name = path.name
    for suffix in (".segm.json", ".bbox.json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)] + ".json"
    pair = split_paths(path.with_name(name))
    return pair if all(p.is_file() for p in pair.values()) else None


def _load_json_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise LvisctlError(f"{path}: results file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LvisctlError(f"{path}: not valid json ({err})") from None
    except RecursionError:  # "[[[[..." 100k deep
        raise LvisctlError(f"{path}: json nested too deeply to be a results file") from None
    if not isinstance(data, list):
        raise LvisctlError(f"{path}: results must be a json list of detections, got {type(data).__name__}")
    return data


def read_results_input(path: Path, table: Any = None) -> ResultsInput:
    """Read and check one input. A ``tta-infer`` pair is joined: box and box score from the bbox file,
    mask and mask score (``mask_score``) from the segm file; a single file needs ``segmentation`` (its
    box, when absent, is the mask's bounding box). Every file passes ``evaluate``'s validator first
    (against ``table``, the ``--images`` json's, when given; :mod:`lvisctl.inference.ensemble_checks`)."""
    pair = _pair_of(path)
    if pair is not None:
        segm, bbox = _load_json_list(pair["segm"]), _load_json_list(pair["bbox"])
        check_results_files([(pair["segm"], segm), (pair["bbox"], bbox)], table)
        if len(segm) != len(bbox):
            raise LvisctlError(f"{pair['segm']}: holds {len(segm)} detections, {pair['bbox']} {len(bbox)}")
        records = [{**s, **b, "mask_score": s.get("score")} for s, b in zip(segm, bbox, strict=True)]
        result = ResultsInput(path, [pair["segm"], pair["bbox"]])
    else:
        records = _load_json_list(path)
        check_results_files([(path, records)], table)
        result = ResultsInput(path, [path])
    for i, rec in enumerate(records):
        problem = _record_problem(rec)
        if problem:
            raise LvisctlError(f"{result.files[0]}: result {i} {problem}")
        image_id = int(rec["image_id"])
        size = (int(rec["segmentation"]["size"][0]), int(rec["segmentation"]["size"][1]))
        if result.sizes.setdefault(image_id, size) != size:
            raise LvisctlError(f"{result.files[0]}: image {image_id} has masks of two sizes")
        result.by_image.setdefault(image_id, []).append(rec)
    return result


def _record_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return "is not an object"
    for key in ("image_id", "category_id"):
        if not isinstance(rec.get(key), int) or isinstance(rec.get(key), bool):
            return f"has {key} {rec.get(key)!r} (must be an integer)"
    score = rec.get("score")
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        return f"has score {score!r} (must be a finite number)"
    seg = rec.get("segmentation")
    if not isinstance(seg, dict) or "counts" not in seg or len(seg.get("size", ())) != 2:
        return "has no RLE 'segmentation' ({size, counts}); ensemble fuses masks (give a segm results file)"
    box = rec.get("bbox")
    if box is not None and (not isinstance(box, list) or len(box) != 4):
        return f"has bbox {box!r} (must be [x, y, w, h])"
    return None


def check_image_sets(inputs: Sequence[ResultsInput], images: Mapping[int, Mapping[str, Any]] | None, source):
    """Different image sets, unknown ids, mismatched sizes -> one ``LvisctlError`` line."""
    first = inputs[0]
    for inp in inputs:
        if images is not None:
            unknown = sorted(set(inp.by_image) - set(images))
            if unknown:
                raise LvisctlError(
                    f"{inp.path}: {len(unknown)} image ids not in {source} (e.g. {unknown[0]}): unknown ids"
                )
            for image_id, (h, w) in inp.sizes.items():
                rec = images[image_id]
                if (int(rec["height"]), int(rec["width"])) != (h, w):
                    raise LvisctlError(
                        f"{inp.path}: image {image_id} masks are {h}x{w}, {source} says "
                        f"{rec['height']}x{rec['width']}: results for a different image set"
                    )
        elif set(inp.by_image) != set(first.by_image):
            extra = sorted(set(inp.by_image) ^ set(first.by_image))
            raise LvisctlError(
                f"{inp.path}: covers other images than {first.path} (e.g. image id {extra[0]}): results for "
                "different image sets (pass --images FILE if some model found nothing on some images)"
            )
        for image_id, size in inp.sizes.items():
            other = first.sizes.get(image_id)
            if other is not None and other != size:
                raise LvisctlError(
                    f"{inp.path}: image {image_id} is {size[0]}x{size[1]} here and {other[0]}x{other[1]} in "
                    f"{first.path}: results for different image sets"
                )


def records_to_detections(records: Sequence[Mapping[str, Any]], size: tuple[int, int], cmap: CategoryMap):
    """One image's full records -> detections (labels contiguous in ``cmap``, masks decoded)."""
    n = len(records)
    if n == 0:
        return {
            "boxes": torch.zeros((0, 4)),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros((0, *size), dtype=torch.bool),
            "mask_boxes": torch.zeros((0, 4)),
        }
    rles = [{"size": list(r["segmentation"]["size"]), "counts": r["segmentation"]["counts"]} for r in records]
    rles = [
        {**r, "counts": r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]} for r in rles
    ]
    # decode gives 0/1 uint8 [H, W, N] in column-major order: viewed as bool [N, H, W] without a copy
    masks = torch.from_numpy(mask_utils.decode(rles).transpose(2, 1, 0)).transpose(1, 2).view(torch.bool)
    boxes = []
    for rec, rle in zip(records, rles, strict=True):
        x, y, w, h = rec["bbox"] if rec.get("bbox") is not None else mask_utils.toBbox(rle).tolist()
        boxes.append([x, y, x + w, y + h])
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor([float(r["score"]) for r in records]),
        "labels": torch.tensor([cmap.index(r["category_id"]) for r in records], dtype=torch.int64),
        "masks": masks,
        "mask_boxes": torch.from_numpy(mask_utils.toBbox(rles)).float(),  # where each mask's pixels are
    }
    if all(r.get("mask_score") is not None for r in records):
        out["mask_scores"] = torch.tensor([float(r["mask_score"]) for r in records])
    return out


def non_empty(records: Sequence[Mapping[str, Any]], dropped: Any) -> list[Mapping[str, Any]]:
    """``records`` without those whose mask is empty, counted in ``dropped`` (a ``results.DropCount``):
    left out before the fusion's per-image cap, so a real detection takes the slot."""
    kept = [r for r in records if not is_empty_mask(r.get("segmentation"))]
    dropped.empty_masks += len(records) - len(kept)
    return kept


def joined_bbox_files(inputs: Sequence[Path]) -> list[Path]:
    """The ``X.bbox.json`` read with each tta-infer ``X.segm.json`` input (an input too, never an output)."""
    return [
        Path(str(p)[: -len(".segm.json")] + ".bbox.json") for p in inputs if str(p).endswith(".segm.json")
    ]
