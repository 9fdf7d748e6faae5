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

from lvisctl.errors import LvisctlError


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


def pseudo_labels_from_predictions(
    predictions: Sequence[Mapping[str, Any]],
    images: Mapping[int, Mapping[str, Any]],
    gt_boxes_xywh: Mapping[int, Sequence[Sequence[float]]],
    categories: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    score_thresh: float,
    max_gt_iou: float = 0.0,
    max_per_image: int = 50,
) -> dict[str, Any]:
    """Select pseudo labels from an LVIS results list and return the LVIS-format pseudo-label file.

    ``mode="missing"`` keeps confident detections away from every ground-truth box (LVIS train);
    ``mode="unlabeled"`` keeps the confident detections of images without annotations, masks included.
    """
    if mode not in ("missing", "unlabeled"):
        raise ValueError(f"mode must be 'missing' or 'unlabeled', got {mode!r}")
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for rec in predictions:
        by_image.setdefault(int(rec["image_id"]), []).append(rec)
    kept: list[Mapping[str, Any]] = []
    for image_id in sorted(by_image):
        recs = by_image[image_id]
        scores = torch.tensor([float(r["score"]) for r in recs])
        if mode == "missing":
            boxes = _xywh_to_xyxy(torch.tensor([r["bbox"] for r in recs], dtype=torch.float32))
            gt = _xywh_to_xyxy(
                torch.tensor(gt_boxes_xywh.get(image_id, []), dtype=torch.float32).reshape(-1, 4)
            )
            idx = select_missing_annotations(
                boxes, scores, gt, score_thresh=score_thresh, max_gt_iou=max_gt_iou
            )
            chosen = [{k: v for k, v in recs[i].items() if k != "segmentation"} for i in idx.tolist()]
        else:
            idx = select_unlabeled_pseudo_labels(
                scores, score_thresh=score_thresh, max_per_image=max_per_image
            )
            chosen = [recs[i] for i in idx.tolist()]
        kept.extend(chosen)
    used_images = [images[i] for i in sorted(images) if mode == "unlabeled" or i in by_image]
    return pseudo_label_file(used_images, kept, categories, source=mode)


def _xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    out = boxes.clone()
    out[:, 2:] += out[:, :2]
    return out


def make_pseudo_labels(
    run_dir: Any,
    images: Any,
    *,
    mode: str,
    checkpoint: Any = None,
    scales: Sequence[int] | None = None,
    image_root: Any = None,
    score_thresh: float = 0.5,
    max_gt_iou: float = 0.0,
    max_per_image: int = 50,
    out: Any = None,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    on_start: Any = None,
    on_images: Any = None,
) -> Any:
    """``lvisctl pseudolabel``: predict on ``images`` (sharded, resumable, through the shared runner), select
    pseudo labels and write them as an LVIS json registered as ``pseudo-labels``. Returns the artifact
    (``None`` on non-main ranks)."""
    from pathlib import Path

    from lvisctl.data.lvis import load_lvis
    from lvisctl.inference.runner import predict_to_run_dir
    from lvisctl.rundir import RunDir, atomic_write_json

    images = Path(images).expanduser().resolve()
    run = RunDir(run_dir)
    out_rel = str(out) if out else f"pseudo_labels/{images.stem}_{mode}.json"
    out_path = run.output_path(out_rel, overwrite=overwrite)  # fail before hours of inference
    gt = load_lvis(images, image_root=image_root)
    if mode == "unlabeled" and gt.num_annotations:
        raise LvisctlError(f"{images}: has annotations; --mode unlabeled is for images without labels")
    outcome = predict_to_run_dir(
        Path(run_dir),
        images,
        checkpoint=checkpoint,
        scales=scales,
        image_root=image_root,
        out=Path(run.root / "predictions" / f"{images.stem}_for_{mode}_pseudo_labels.json"),
        overwrite=True,  # an intermediate of this command, re-made with the current checkpoint
        overrides=overrides,
        on_start=on_start,
        on_images=on_images,
    )
    if not outcome.is_main or outcome.artifact is None:
        return None
    from lvisctl.inference.results import read_split_results

    predictions = read_split_results(outcome.out_path)
    gt_boxes = {i: [a["bbox"] for a in anns] for i, anns in gt.anns_by_image.items()}
    payload = pseudo_labels_from_predictions(
        predictions,
        gt.images,
        gt_boxes,
        [gt.categories[c] for c in sorted(gt.categories)],
        mode=mode,
        score_thresh=score_thresh,
        max_gt_iou=max_gt_iou,
        max_per_image=max_per_image,
    )
    atomic_write_json(out_path, payload, indent=None)
    return run.register(
        "pseudo-labels",
        out_path,
        inputs=[outcome.artifact, images],
        meta={
            "mode": mode,
            "images": str(images),
            "score_thresh": score_thresh,
            "num_labels": len(payload["annotations"]),
            "num_images": len(payload["images"]),
            **({"image_root": str(Path(image_root).expanduser().resolve())} if image_root else {}),
        },
    )
