"""Collect per-image predictions as LVIS results records and score them with lvisctl's evaluator.

Shared by the mmdet metric and the detectron2 evaluator: both hand over boxes (xyxy, original pixels),
scores, LVIS category ids and binary masks per image; the records go through a results file, so the
evaluation is exactly ``lvisctl evaluate``'s (hotcoco, lvis-api's numbers, 300 per image).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lvisctl.inference.results import BBOX_DECIMALS, encode_masks, xyxy_to_xywh


def image_records(
    image_id: int,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    cat_ids: Sequence[int],
    masks: torch.Tensor | None,
) -> list[dict[str, Any]]:
    """One image's detections -> LVIS results records (``segmentation`` only when masks are given)."""
    xywh = xyxy_to_xywh(boxes.detach().float().cpu()).tolist()
    rles = encode_masks(masks.bool()) if masks is not None and len(masks) else [None] * len(xywh)
    out = []
    for box, score, cat, rle in zip(xywh, scores.detach().float().cpu().tolist(), cat_ids, rles, strict=True):
        rec: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(cat),
            "bbox": [round(float(v), BBOX_DECIMALS) for v in box],
            "score": float(score),
        }
        if rle is not None:
            rec["segmentation"] = rle
        out.append(rec)
    return out


def evaluate_records(
    records: list[dict[str, Any]], ann_file: str | Path, iou_types: Sequence[str]
) -> dict[str, dict[str, float]]:
    """``{iou_type: {"AP": ..., "AP50": ..., "APr": ...}}`` of ``records`` against ``ann_file``."""
    from lvisctl.evaluation.lvis_metrics import evaluate_lvis, load_ground_truth, load_results_for_eval
    from lvisctl.inference.results import write_results

    gt = load_ground_truth(ann_file)
    with tempfile.TemporaryDirectory(prefix="lvisctl-eval-") as tmp:
        out: dict[str, dict[str, float]] = {}
        for iou_type in iou_types:
            # segm without bbox (mask areas for APs/APm/APl, as the GT), bbox without segmentation
            drop = "bbox" if iou_type == "segm" else "segmentation"
            path = write_results(
                ({k: v for k, v in r.items() if k != drop} for r in records), Path(tmp) / f"{iou_type}.json"
            )
            loaded = load_results_for_eval(path, gt)
            out[iou_type] = evaluate_lvis(loaded, gt, (iou_type,))[iou_type].metrics
    return out
