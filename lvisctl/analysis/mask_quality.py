"""Mask quality with oracle boxes: the paper's "a good box is not a good mask", measured.

Detection AP mixes two failures: the detector missed the object, or it found the box and drew a bad mask.
Here the mask branch runs on the ground-truth boxes with their ground-truth categories, so only the
second failure is left. Per annotation we record the mask IoU and the Boundary IoU (Cheng et al. 2021,
dilation ratio 0.02) of the predicted mask against the ground truth, and aggregate them per frequency
group (r/c/f) and per mask/box area-ratio bin (thin objects have small ratios). The same predictions,
each ground-truth box as a detection with score 1, are scored by the LVIS evaluator: the oracle-box
mask AP.

With ``mask_head.level_assign: eq1`` the mask branch picks its FPN level with the test-time two-pass rule
(S_mask estimated from the predicted mask), exactly as in normal inference: the model's own
``predict_masks`` does it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.data.lvis import LvisData, ann_to_mask
from lvisctl.evaluation.boundary_ap import boundary_width, mask_boundary

# Mask/box area-ratio bins: [lo, hi) with labels; < 0.25 is where Eq. 1 moves a RoI to P2.
RATIO_BINS: tuple[tuple[str, float, float], ...] = (
    ("<0.25", 0.0, 0.25),
    ("0.25-0.5", 0.25, 0.5),
    (">=0.5", 0.5, math.inf),
)
GROUPS = ("all", "r", "c", "f")


@dataclass(frozen=True)
class MaskRecord:
    """One ground-truth instance with the mask predicted inside its box."""

    ann_id: int
    image_id: int
    category_id: int
    frequency: str
    area_ratio: float  # GT mask area / GT box area
    mask_iou: float
    boundary_iou: float


def ratio_bin(ratio: float) -> str:
    """The label of the area-ratio bin ``ratio`` falls in."""
    for label, lo, hi in RATIO_BINS:
        if lo <= ratio < hi:
            return label
    raise ValueError(f"area ratio {ratio} outside every bin")


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two binary masks of the same shape; 1.0 when both are empty (nothing to get wrong)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    union = np.logical_or(p, g).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, g).sum() / union)


def boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al. 2021): IoU of the inner contour bands of width d = ratio * diagonal.

    Uses the evaluator's band (``lvisctl.evaluation.boundary_ap``), so the analysis and Boundary AP agree.
    """
    h, w = np.asarray(gt).shape
    d = boundary_width(h, w, dilation_ratio)
    return mask_iou(mask_boundary(pred, d), mask_boundary(gt, d))


def gt_area_ratio(ann: Mapping[str, Any]) -> float:
    """Mask area over box area of one annotation (0 for a degenerate box)."""
    box_area = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return float(ann.get("area", 0.0)) / box_area if box_area > 0 else 0.0


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(records: Iterable[MaskRecord]) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """``{group: {bin: {"count", "mask_iou", "boundary_iou"}}}`` for groups all/r/c/f and bins + "all".

    A cell with no instances has count 0 and ``None`` means.
    """
    records = list(records)
    table: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for group in GROUPS:
        in_group = [r for r in records if group == "all" or r.frequency == group]
        row: dict[str, dict[str, float | int | None]] = {}
        for label in ("all", *(b[0] for b in RATIO_BINS)):
            cell = [r for r in in_group if label == "all" or ratio_bin(r.area_ratio) == label]
            row[label] = {
                "count": len(cell),
                "mask_iou": _mean([r.mask_iou for r in cell]),
                "boundary_iou": _mean([r.boundary_iou for r in cell]),
            }
        table[group] = row
    return table


MaskFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(image_id, boxes float[N, 4] xyxy original pixels, labels int64[N] contiguous) -> bool[N, H, W]``."""


def oracle_box_records(
    data: LvisData,
    image_ids: Sequence[int],
    category_map: CategoryMap,
    predict: MaskFn,
    *,
    on_image: Callable[[], None] | None = None,
) -> tuple[list[MaskRecord], list[dict[str, Any]]]:
    """Run ``predict`` on every image's ground-truth boxes; ``(records, oracle results list)``.

    The results list holds one LVIS result per instance (GT box, GT category, score 1, predicted mask as
    compressed RLE), ready for the LVIS evaluator. Instances of categories the model does not know are
    skipped (a checkpoint trained on another category set).
    """
    import pycocotools.mask as mask_utils

    records: list[MaskRecord] = []
    results: list[dict[str, Any]] = []
    for image_id in image_ids:
        img = data.images[image_id]
        h, w = int(img["height"]), int(img["width"])
        anns = [a for a in data.anns_by_image.get(image_id, []) if int(a["category_id"]) in category_map]
        if anns:
            boxes = torch.tensor(
                [
                    [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                    for a in anns
                ],
                dtype=torch.float32,
            )
            labels = torch.tensor([category_map.index(int(a["category_id"])) for a in anns])
            pred = predict(image_id, boxes, labels).cpu().numpy().astype(bool)
            for ann, mask in zip(anns, pred, strict=True):
                gt = ann_to_mask(ann, h, w).astype(bool)
                cat = data.categories[int(ann["category_id"])]
                records.append(
                    MaskRecord(
                        ann_id=int(ann["id"]),
                        image_id=int(image_id),
                        category_id=int(ann["category_id"]),
                        frequency=str(cat.get("frequency", "f")),
                        area_ratio=gt_area_ratio(ann),
                        mask_iou=mask_iou(mask, gt),
                        boundary_iou=boundary_iou(mask, gt),
                    )
                )
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                results.append(
                    {
                        "image_id": int(image_id),
                        "category_id": int(ann["category_id"]),
                        "bbox": [float(v) for v in ann["bbox"]],
                        "score": 1.0,
                        "segmentation": rle,
                    }
                )
        if on_image is not None:
            on_image()
    return records, results


def records_to_json(records: Iterable[MaskRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
