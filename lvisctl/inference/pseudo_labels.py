"""Self-training pseudo labels (paper section 2.1, "Self-training").

Two uses, one selection step each:

* **Missing annotations on LVIS train.** LVIS is federated: an object of a category that was not
  exhaustively annotated on an image can be present without a label, and the detector is then punished
  for finding it. The model is run on the training images; confident detections whose box does not
  overlap any ground-truth box are kept as *pseudo labels* and treated as missing annotations: in the
  next training run, proposals with a large IoU to one of them are ignored by the box classifier
  (``target["ignore_boxes"]``, see ``model.roi_heads.ignore_iou``).
* **Extra unlabeled images (Open Images in the paper).** Confident detections become the annotations of
  those images; they are trained jointly with LVIS, a random subset (10k in the paper) per epoch, with a
  loss weight lambda (``target["loss_weight"]``).

Both are written as LVIS-format json (images, annotations with ``bbox``, ``category_id``, ``score`` and,
for unlabeled images, an RLE ``segmentation``), so the data layer reads them like any LVIS file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torchvision.ops import box_iou


def select_missing_annotations(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    *,
    score_thresh: float = 0.5,
    max_gt_iou: float = 0.0,
) -> torch.Tensor:
    """Indices of detections to keep as missing-annotation pseudo labels.

    Keeps detections with ``score >= score_thresh`` whose IoU with every ground-truth box (any category)
    is ``<= max_gt_iou``; the paper keeps boxes that "do not have overlap with ground truth", i.e. the
    default ``max_gt_iou = 0``. Boxes are xyxy.
    """
    keep = scores >= score_thresh
    if gt_boxes.numel() and boxes.numel():
        keep &= box_iou(boxes, gt_boxes).max(dim=1).values <= max_gt_iou
    return torch.nonzero(keep, as_tuple=False).flatten()


def select_unlabeled_pseudo_labels(
    scores: torch.Tensor, *, score_thresh: float = 0.5, max_per_image: int = 50
) -> torch.Tensor:
    """Indices of the confident detections (highest score first) that become an unlabeled image's labels."""
    order = torch.argsort(scores, descending=True)
    order = order[scores[order] >= score_thresh]
    return order[:max_per_image]


def pseudo_label_file(
    images: Sequence[Mapping[str, Any]],
    records: Iterable[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    *,
    source: str,
) -> dict[str, Any]:
    """Assemble an LVIS-format json from LVIS results records (``image_id``, ``category_id``, ``bbox``,
    ``score``, optional ``segmentation``). ``source`` is ``"missing"`` or ``"unlabeled"``."""
    annotations = []
    for ann_id, rec in enumerate(records, start=1):
        ann = {
            "id": ann_id,
            "image_id": int(rec["image_id"]),
            "category_id": int(rec["category_id"]),
            "bbox": [float(v) for v in rec["bbox"]],
            "area": float(rec["bbox"][2] * rec["bbox"][3]),
            "score": float(rec["score"]),
        }
        if "segmentation" in rec:
            ann["segmentation"] = rec["segmentation"]
        annotations.append(ann)
    image_records = [
        {
            **{k: img[k] for k in ("id", "width", "height") if k in img},
            **{k: img[k] for k in ("coco_url", "file_name") if k in img},
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
        for img in images
    ]
    return {
        "info": {"description": f"lvisctl pseudo labels ({source})", "pseudo_label_source": source},
        "images": image_records,
        "annotations": annotations,
        "categories": [dict(c) for c in categories],
    }
