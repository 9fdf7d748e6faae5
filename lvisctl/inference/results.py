"""Per-image detection tensors -> LVIS results records, and the one function that writes a results file.

A record is ``{"image_id", "category_id" (LVIS id), "bbox": [x, y, w, h], "score", "segmentation":
{"size": [h, w], "counts": str}}`` with the mask as compressed COCO RLE (pycocotools): the LVIS results
format, readable by lvis-api, hotcoco, detectron2 and the evaluation server.

Mask areas. lvis-api (and pycocotools, and hotcoco) set a result's ``area`` to its *box* area ``w * h``
whenever the file has ``bbox``, and that area picks the small/medium/large bucket of the *mask* metrics
too (APs/APm/APl), while the ground truth uses mask areas. A stored ``area`` field does not help: all
three overwrite it (checked). So a run's predictions are written as two files (:func:`write_split_results`):
``<stem>.segm.json`` without ``bbox`` (every evaluator then takes mask areas; the file ``submit`` uploads)
and ``<stem>.bbox.json`` without ``segmentation`` (the box metrics, on the model's predicted boxes).
Everything that writes a results file goes through this module, so format decisions live in one place.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.data.json_stream import iter_json_list
from lvisctl.errors import LvisctlError
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


@functools.lru_cache(maxsize=64)
def empty_rle_counts(height: int, width: int) -> str:
    """The compressed counts of an all-zero ``height x width`` mask (one zero run)."""
    rle = mask_utils.frPyObjects([{"size": [height, width], "counts": [height * width]}], height, width)[0]
    return rle["counts"].decode("ascii")


def is_empty_mask(segmentation: Mapping[str, Any] | None) -> bool:
    """Whether a compressed RLE is all zeros (an empty mask: lvis-api would not score it)."""
    if not isinstance(segmentation, Mapping) or "counts" not in segmentation:
        return False
    counts = segmentation["counts"]
    counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
    h, w = (int(v) for v in segmentation["size"])
    return counts == empty_rle_counts(h, w)


@dataclass
class DropCount:
    """Detections a writer left out because their mask was empty (never written: lvis-api drops area 0)."""

    empty_masks: int = 0


def empty_dropped_line(count: int) -> str:
    """What tta-infer, ensemble and pseudolabel say about the detections they did not write."""
    return (
        f"{count} detections with an empty mask left out (never written: lvis-api would not score them; "
        "where spare candidates remained, the next ones took their slots under the per-image cap)"
    )


def detections_to_records(
    image_id: int,
    detections: Mapping[str, torch.Tensor],
    category_map: CategoryMap,
    dropped: DropCount | None = None,
) -> list[dict[str, Any]]:
    """One image's predictor output -> full LVIS results records, in the order given, without the
    detections whose mask is empty (counted in ``dropped``): no results file lvisctl writes holds one.

    ``detections``: original-resolution ``boxes`` xyxy, ``scores`` (classification), contiguous ``labels``
    and either binary ``masks`` [N, H, W] / [N, 1, H, W] or RoI-level ``mask_probs`` [N, 1, M, M] (the
    predictor's output) with ``image_size`` (h, w), pasted at that size into ``paste_boxes`` (default
    ``boxes``; the paper TTA takes a mask from another pass's box), thresholded at ``mask_thresh`` (default
    0.5) and encoded from the box crops by :mod:`lvisctl.inference.postprocess` (on the probabilities'
    device: the GPU when the model ran there). With Mask Scoring the model adds ``mask_scores``: the
    record then carries it as ``mask_score``, which :func:`split_record` makes the segm file's ``score``
    while the bbox file keeps the classification score (as MS R-CNN and mmdet score them).

    A per-image ``cap`` (a predictor's spares, :func:`lvisctl.inference.predictor.writing_spares`): the
    records are the first ``cap`` detections whose mask is not empty, so a mask that pastes to nothing
    gives its slot to the next candidate; spares are encoded only as far as empty masks ask for them.
    """
    boxes = xyxy_to_xywh(detections["boxes"].detach().float().cpu()).tolist()
    scores = detections["scores"].detach().float().cpu().tolist()
    labels = detections["labels"].detach().cpu().tolist()
    mask_scores = detections.get("mask_scores")
    mask_scores = mask_scores.detach().float().cpu().tolist() if mask_scores is not None else None
    cat_ids = [category_map.cat_id(int(label)) for label in labels]  # an unknown label is a bug: raise
    records = []
    for i, rle in _non_empty_rles(detections, dropped):
        cat_id = cat_ids[i]
        if cat_id is None:  # a class the json has no category for (tta-infer --map-by-name)
            continue
        record = {
            "image_id": int(image_id),
            "category_id": cat_id,
            "bbox": [round(float(v), BBOX_DECIMALS) for v in boxes[i]],
            "score": float(scores[i]),
            "segmentation": rle,
        }
        if mask_scores is not None:
            record[MASK_SCORE] = float(mask_scores[i])
        records.append(record)
    return records


def _non_empty_rles(
    detections: Mapping[str, Any], dropped: DropCount | None
) -> list[tuple[int, dict[str, Any]]]:
    """``(index, rle)`` of the detections whose mask is not empty, in order; at most ``cap`` of them when
    the detections say one. Encoded window by window: the first ``cap``, then as many of the next as
    empty masks left slots (usually none), so the spares cost only the pastes that refill."""
    n = int(detections["scores"].shape[0])
    cap = int(detections["cap"]) if "cap" in detections else n
    kept: list[tuple[int, dict[str, Any]]] = []
    start = 0
    while len(kept) < cap and start < n:
        stop = min(n, start + cap - len(kept))
        for i, rle in zip(range(start, stop), _rles(detections, slice(start, stop)), strict=True):
            if is_empty_mask(rle):
                if dropped is not None:
                    dropped.empty_masks += 1
                continue
            kept.append((i, rle))
        start = stop
    return kept


def _rles(detections: Mapping[str, Any], part: slice) -> list[dict[str, Any]]:
    if "mask_probs" in detections:
        from lvisctl.inference.postprocess import masks_to_rles

        h, w = (int(v) for v in detections["image_size"])
        thresh = float(detections.get("mask_thresh", 0.5))
        boxes = detections.get("paste_boxes", detections["boxes"])[part]
        return masks_to_rles(detections["mask_probs"][part].detach(), boxes.detach(), (h, w), thresh)
    masks = detections["masks"][part]
    return encode_masks(masks[:, 0] if masks.ndim == 4 else masks)


def json_piece(i: int, record: Mapping[str, Any]) -> str:
    """Record ``i`` of a results file as compact json, with the comma that separates it from the previous."""
    return ("," if i else "") + json.dumps(record, separators=(",", ":"))


def iter_json_records(records: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    """Compact json text of ``records`` as a list, piece by piece (so huge files never sit in memory)."""
    yield "["
    for i, record in enumerate(records):
        yield json_piece(i, record)
    yield "]\n"


def write_results(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write an LVIS results file atomically (compact json list). ``records`` may be a generator.

    The single writer of results files (with :func:`write_split_results`): keep format decisions here.
    """
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for piece in iter_json_records(records):
            fh.write(piece)
    return Path(path)


IOU_TYPE_FIELDS = {"segm": "segmentation", "bbox": "bbox"}  # the field each file keeps (of the two)
# A full record's Mask Scoring score (cls score x predicted mask IoU): the segm file's ``score``.
MASK_SCORE = "mask_score"


def split_paths(path: str | os.PathLike[str]) -> dict[str, Path]:
    """``out/val.json`` -> ``{"segm": out/val.segm.json, "bbox": out/val.bbox.json}``."""
    p = Path(path)
    stem = p.name[: -len(".json")] if p.name.endswith(".json") else p.name
    return {t: p.with_name(f"{stem}.{t}.json") for t in IOU_TYPE_FIELDS}


def split_record(record: Mapping[str, Any], iou_type: str) -> dict[str, Any]:
    """The record for the ``iou_type`` file: without the other type's field (``bbox`` / ``segmentation``).

    A Mask Scoring record's ``mask_score`` becomes the segm file's ``score``; the bbox file keeps the
    classification score. Neither file carries a ``mask_score`` field (the LVIS results format).
    """
    drop = IOU_TYPE_FIELDS["bbox" if iou_type == "segm" else "segm"]
    out = {k: v for k, v in record.items() if k not in (drop, MASK_SCORE)}
    if iou_type == "segm" and MASK_SCORE in record:
        out["score"] = record[MASK_SCORE]
    return out


def write_split_results(
    records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write full records as the two files of :func:`split_paths` in one streaming pass, both atomically
    (neither appears unless both were written)."""
    paths = split_paths(path)
    with (
        atomic_output(paths["segm"]) as segm_tmp,
        atomic_output(paths["bbox"]) as bbox_tmp,
        open(segm_tmp, "w", encoding="utf-8") as segm_fh,
        open(bbox_tmp, "w", encoding="utf-8") as bbox_fh,
    ):
        files = {"segm": segm_fh, "bbox": bbox_fh}
        for fh in files.values():
            fh.write("[")
        for i, record in enumerate(records):
            for iou_type, fh in files.items():
                fh.write(json_piece(i, split_record(record, iou_type)))
        for fh in files.values():
            fh.write("]\n")
    return paths


def read_split_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The full records of a :func:`write_split_results` pair (the two files hold the same detections in
    the same order), for consumers that need boxes and masks together (pseudo-labelling). ``score`` is the
    classification score; with Mask Scoring the segm file's score comes back as ``mask_score``."""
    paths = split_paths(path)
    segm = json.loads(paths["segm"].read_text())
    bbox = json.loads(paths["bbox"].read_text())
    if len(segm) != len(bbox):
        raise ValueError(f"{paths['segm']} and {paths['bbox']} hold different numbers of detections")
    return [_merge(s, b) for s, b in zip(segm, bbox, strict=True)]


def _merge(segm: dict[str, Any], bbox: dict[str, Any]) -> dict[str, Any]:
    """The full record of one detection's two halves (the inverse of :func:`split_record`)."""
    full = {**bbox, **segm}
    if segm.get("score") != bbox.get("score"):  # Mask Scoring: the segm file has the mask score
        full["score"], full[MASK_SCORE] = bbox["score"], segm["score"]
    return full


# ------------------------------------------------------------------------------ streaming readers


def iter_split_results(group_path: Path) -> Iterator[dict[str, Any]]:
    """The full records of a ``tta-infer`` / runner results pair (``X.segm.json`` + ``X.bbox.json``,
    same detections in the same order), streamed."""
    paths = split_paths(group_path)
    for segm, bbox in itertools.zip_longest(iter_json_list(paths["segm"]), iter_json_list(paths["bbox"])):
        if segm is None or bbox is None:
            raise LvisctlError(f"{paths['segm']} and {paths['bbox']} hold different numbers of detections")
        yield {**bbox, **segm}
