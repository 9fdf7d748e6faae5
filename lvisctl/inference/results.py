"""Per-image detection tensors -> LVIS results records, and the one function that writes a results file.

A record is ``{"image_id", "category_id" (LVIS id), "bbox": [x, y, w, h], "score", "segmentation":
{"size": [h, w], "counts": str}}`` with the mask as compressed COCO RLE (pycocotools): the LVIS results
format, readable by lvis-api, hotcoco, detectron2 and the evaluation server.

Mask areas. lvis-api (and pycocotools, and hotcoco) set a result's ``area`` to its *box* area ``w * h``
whenever the file has ``bbox``, and that area picks the small/medium/large bucket of the *mask* metrics
too (APs/APm/APl), while the ground truth uses mask areas. A stored ``area`` field does not help: all
three overwrite it (checked). So the file keeps ``bbox`` (the box metrics need it) and the evaluation
drops it before the mask evaluation, which then takes each area from the RLE, as detectron2 does
(``lvisctl.evaluation.results_io.drop_boxes_for_mask_eval``). Everything that writes a results file
calls :func:`write_results`, so format decisions live in one place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.rundir.io import atomic_output

# Box coordinates are written with 2 decimals: a hundredth of a pixel changes no IoU that matters and
# keeps LVIS-scale files (~6M records) noticeably smaller.
BBOX_DECIMALS = 2


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Binary masks ``[N, H, W]`` -> compressed RLEs ``{"size": [h, w], "counts": str}`` (json-ready)."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    if n == 0:
        return []
    # pycocotools wants uint8 in Fortran order with the instances last.
    array = np.asfortranarray(masks.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy())
    rles = mask_utils.encode(array)
    return [{"size": [int(h), int(w)], "counts": r["counts"].decode("ascii")} for r in rles]


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` corner boxes -> ``[x, y, w, h]`` (the COCO/LVIS results convention)."""
    out = boxes.clone()
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


def detections_to_records(
    image_id: int, detections: Mapping[str, torch.Tensor], category_map: CategoryMap
) -> list[dict[str, Any]]:
    """One image's predictor output (original-resolution ``boxes`` xyxy, ``scores``, contiguous
    ``labels``, binary ``masks`` [N, H, W]) -> LVIS results records, in the order given."""
    boxes = xyxy_to_xywh(detections["boxes"].detach().float().cpu()).tolist()
    scores = detections["scores"].detach().float().cpu().tolist()
    labels = detections["labels"].detach().cpu().tolist()
    rles = encode_masks(detections["masks"])
    records = []
    for box, score, label, rle in zip(boxes, scores, labels, rles, strict=True):
        records.append(
            {
                "image_id": int(image_id),
                "category_id": category_map.cat_id(int(label)),
                "bbox": [round(float(v), BBOX_DECIMALS) for v in box],
                "score": float(score),
                "segmentation": rle,
            }
        )
    return records


def iter_json_records(records: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    """Compact json text of ``records`` as a list, piece by piece (so huge files never sit in memory)."""
    yield "["
    for i, record in enumerate(records):
        yield ("," if i else "") + json.dumps(record, separators=(",", ":"))
    yield "]\n"


def write_results(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write an LVIS results file atomically (compact json list). ``records`` may be a generator.

    The single writer of results files: keep format decisions (fields, rounding) here.
    """
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for piece in iter_json_records(records):
            fh.write(piece)
    return Path(path)
