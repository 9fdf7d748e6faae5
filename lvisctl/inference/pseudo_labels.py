"""Self-training pseudo labels (paper section 2.1, "Self-training").

Two sources, one selection step each (``lvisctl pseudolabel SOURCE``):

* **``lvis``: missing annotations on LVIS train** (file mode ``missing``). LVIS is federated: an object of
  a category that was not exhaustively annotated on an image can be present without a label, and the
  detector is then punished for finding it. The model is run on the training images; confident
  detections whose box overlaps no ground-truth box (the paper's rule), of a category that can be missing
  there (listed in the image's ``not_exhaustive_category_ids``, or not verified at all: neither annotated
  nor in ``neg_category_ids``; lvisctl's addition, ``pseudolabel.category_filter: false`` drops it), are
  kept as *pseudo labels* and treated as missing annotations: in the next
  training run, anchors and proposals with a large IoU to one of them are ignored
  (``target["ignore_boxes"]``, see ``model.roi_heads.ignore_iou`` and :mod:`lvisctl.modeling.rpn`).
* **``openimages`` / ``images``: extra unlabeled images** (file mode ``unlabeled``; Open Images in the
  paper). Confident detections become the annotations of those images; they are trained jointly with
  LVIS, a random subset (10k in the paper) per epoch, with a loss weight lambda (``target["loss_weight"]``).
  The images come from a folder, an image list or an image-info json (:mod:`lvisctl.data.image_sources`).

Both are written as LVIS v1 json (images, annotations with ``bbox``, RLE ``segmentation``, ``area``,
``score``; the checkpoint's categories), so ``lvisctl data validate`` accepts them, lvis-api loads them
and the data layer reads them like any LVIS file. The predictions made on the way are registered with
meta ``purpose: "pseudolabel"``: they are not predictions for evaluation.

The selection rule is here (:class:`Selector`, :func:`write_pseudo_labels`); the file's records are
:mod:`lvisctl.inference.pseudo_label_records`'s; the command is
:class:`lvisctl.inference.pseudolabel_job.PseudoLabelJob`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_iou

from lvisctl.errors import LvisctlError
from lvisctl.inference.pseudo_label_records import (
    ScoreSample,
    annotation,
    file_info,
    group_by_image,
    image_record,
    pseudo_label_file,
    xywh_to_xyxy,
)

SOURCES = {"lvis": "missing", "openimages": "unlabeled", "images": "unlabeled"}  # SOURCE -> file mode
MODES = {"missing": "lvis", "unlabeled": "images"}  # the old --mode -> SOURCE
PURPOSE = "pseudolabel"  # predictions meta: evaluate --run-dir never takes these
HANDFUL = 10  # fewer kept labels than this: show the score distribution
DEFAULT_SCORE_THRESH = 0.5


@dataclass(frozen=True)
class ScoreThresholds:
    """A score threshold per frequency group (``r``, ``c``, ``f``)."""

    r: float = DEFAULT_SCORE_THRESH
    c: float = DEFAULT_SCORE_THRESH
    f: float = DEFAULT_SCORE_THRESH

    @classmethod
    def parse(cls, text: str) -> ScoreThresholds:
        """``"0.5"`` (every group), ``"r=0.3,c=0.4,f=0.5"`` or a mix (``"0.5,r=0.3"``: r 0.3, others 0.5)."""
        values: dict[str, float] = {}
        default = DEFAULT_SCORE_THRESH
        seen: set[str] = set()
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, _, value = part.rpartition("=")
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if key.strip() not in ("", "r", "c", "f") or not 0.0 <= number <= 1.0:
                raise LvisctlError(
                    f"--score-thresh {text!r}: expected a number in [0, 1] or per group r=0.3,c=0.4,f=0.5"
                )
            group = key.strip() or "default"
            if group in seen:  # "0.5,0.6" or "r=0.3,r=0.4": which one was meant cannot be known
                twice = "a second bare number" if group == "default" else f"{group}= twice"
                raise LvisctlError(
                    f"--score-thresh {text!r}: {twice}; give one number, or one per group r=0.3,c=0.4,f=0.5"
                )
            seen.add(group)
            if key.strip():
                values[key.strip()] = number
            else:
                default = number
        if not text.strip():
            raise LvisctlError("--score-thresh: empty")
        return cls(**{g: values.get(g, default) for g in "rcf"})

    def for_category(self, frequency: str | None) -> float:
        return (
            float(getattr(self, frequency)) if frequency in ("r", "c", "f") else max(self.r, self.c, self.f)
        )

    def by_category(self, categories: Iterable[Mapping[str, Any]]) -> dict[int, float]:
        return {int(c["id"]): self.for_category(c.get("frequency")) for c in categories}

    def __str__(self) -> str:
        if self.r == self.c == self.f:
            return f"{self.r:g}"
        return f"r={self.r:g},c={self.c:g},f={self.f:g}"


def _thresholds(score_thresh: float | Mapping[int, float], category_ids: Sequence[int]) -> torch.Tensor:
    if isinstance(score_thresh, Mapping):
        default = max(score_thresh.values(), default=DEFAULT_SCORE_THRESH)
        return torch.tensor([float(score_thresh.get(c, default)) for c in category_ids])
    return torch.full((len(category_ids),), float(score_thresh))


# ------------------------------------------------------------------------------------ selection
def select_missing_annotations(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    *,
    score_thresh: float | torch.Tensor = DEFAULT_SCORE_THRESH,
    max_gt_iou: float = 0.0,
) -> torch.Tensor:
    """Indices of detections to keep as missing-annotation pseudo labels.

    Keeps detections with ``score >= score_thresh`` (a number or one per detection) whose IoU with every
    ground-truth box (any category) is ``<= max_gt_iou``; the paper keeps boxes that "do not have overlap
    with ground truth", i.e. the default ``max_gt_iou = 0``. Boxes are xyxy.
    """
    keep = scores >= score_thresh
    if gt_boxes.numel() and boxes.numel():
        keep &= box_iou(boxes, gt_boxes).max(dim=1).values <= max_gt_iou
    return torch.nonzero(keep, as_tuple=False).flatten()


def select_unlabeled_pseudo_labels(
    scores: torch.Tensor,
    *,
    score_thresh: float | torch.Tensor = DEFAULT_SCORE_THRESH,
    max_per_image: int = 50,
) -> torch.Tensor:
    """Indices of the confident detections (highest score first) that become an unlabeled image's labels."""
    order = torch.argsort(scores, descending=True)
    thresh = score_thresh[order] if isinstance(score_thresh, torch.Tensor) else score_thresh
    order = order[scores[order] >= thresh]
    return order[:max_per_image]


def can_be_missing(image: Mapping[str, Any], category_id: int, annotated: set[int]) -> bool:
    """Federated labels: a category can have unannotated instances on an image only if it is listed as
    not exhaustively annotated there, or was never verified (neither annotated nor negative). An image
    record without the label lists tells nothing, so everything can be missing."""
    if category_id in image.get("not_exhaustive_category_ids", ()):
        return True
    return category_id not in annotated and category_id not in image.get("neg_category_ids", ())


@dataclass
class Selector:
    """The selection rule of one ``pseudolabel`` run, applied image by image (:meth:`select`)."""

    mode: str
    score_thresh: float | Mapping[int, float]
    images: Mapping[int, Mapping[str, Any]]
    gt_boxes_xywh: Mapping[int, Sequence[Sequence[float]]] = field(default_factory=dict)
    gt_categories: Mapping[int, set[int]] | None = None
    max_gt_iou: float = 0.0
    max_per_image: int = 50
    # lvisctl's addition, not the paper's ("pseudo labels of bounding boxes that do not have overlap with
    # ground truth"): keep only categories that can be missing on the image (pseudolabel.category_filter)
    category_filter: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("missing", "unlabeled"):
            raise ValueError(f"mode must be 'missing' or 'unlabeled', got {self.mode!r}")

    @classmethod
    def for_data(
        cls,
        data: Any,
        mode: str,
        score_thresh: Mapping[int, float],
        max_gt_iou: float,
        max_per_image: int,
        category_filter: bool = True,
    ) -> Selector:
        """The rule for the images of ``data`` (an ``LvisData``; its annotations count for LVIS)."""
        anns = data.anns_by_image if mode == "missing" else {}
        boxes = {i: [a["bbox"] for a in group] for i, group in anns.items()}
        cats = {i: {a["category_id"] for a in group} for i, group in anns.items()}
        return cls(mode, score_thresh, data.images, boxes, cats, max_gt_iou, max_per_image, category_filter)

    def select(self, image_id: int, recs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The records of one image that become pseudo labels (module docstring)."""
        if self.mode == "missing" and self.category_filter:
            annotated = (self.gt_categories or {}).get(image_id, set())
            image = self.images.get(image_id, {})
            recs = [r for r in recs if can_be_missing(image, int(r["category_id"]), annotated)]
        if not recs:
            return []
        scores = torch.tensor([float(r["score"]) for r in recs])
        thresh = _thresholds(self.score_thresh, [int(r["category_id"]) for r in recs])
        if self.mode == "missing":
            boxes = xywh_to_xyxy(torch.tensor([r["bbox"] for r in recs], dtype=torch.float32))
            gt = torch.tensor(self.gt_boxes_xywh.get(image_id, []), dtype=torch.float32).reshape(-1, 4)
            idx = select_missing_annotations(
                boxes, scores, xywh_to_xyxy(gt), score_thresh=thresh, max_gt_iou=self.max_gt_iou
            )
        else:
            idx = select_unlabeled_pseudo_labels(
                scores, score_thresh=thresh, max_per_image=self.max_per_image
            )
        return [recs[i] for i in idx.tolist()]


def pseudo_labels_from_predictions(
    predictions: Sequence[Mapping[str, Any]], selector: Selector, categories: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Select pseudo labels from an LVIS results list by ``selector`` and return the LVIS-format
    pseudo-label file (in memory; the command streams the same selection, :func:`write_pseudo_labels`).

    ``mode="missing"`` keeps confident detections away from every ground-truth box (LVIS train), of
    categories that can be missing on the image (:func:`can_be_missing`; ``gt_categories``: the annotated
    category ids per image); ``mode="unlabeled"`` keeps the confident detections of images without
    annotations. Masks are kept in both. ``score_thresh``: one number, or one per category id.
    """
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for rec in predictions:
        by_image.setdefault(int(rec["image_id"]), []).append(rec)
    kept = [rec for image_id in sorted(by_image) for rec in selector.select(image_id, by_image[image_id])]
    images = selector.images
    used_images = [images[i] for i in sorted(images) if selector.mode == "unlabeled" or i in by_image]
    return pseudo_label_file(used_images, kept, categories, source=selector.mode)


def write_pseudo_labels(
    path: Path,
    records: Iterable[Mapping[str, Any]],
    selector: Selector,
    categories: Sequence[Mapping[str, Any]],
    *,
    scores: ScoreSample | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[int, int]:
    """Stream the selection into the LVIS json at ``path`` (atomically), one image's records at a time:
    memory does not grow with the number of images. ``scores`` sees every predicted score. Returns
    ``(labels, images)``; the images are all of ``selector.images`` for unlabeled images, those with a
    prediction for LVIS. ``provenance`` (``data.self_training.provenance_of``) joins the file's ``info``."""
    from lvisctl.inference.results import is_empty_mask
    from lvisctl.rundir import atomic_output

    seen: set[int] = set()
    count = 0
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        head = {"info": file_info(selector.mode, provenance), "categories": [dict(c) for c in categories]}
        fh.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"annotations":[')
        for image_id, recs in group_by_image(records):
            seen.add(image_id)
            if scores is not None:
                scores.add(recs)
            # An empty mask is no label (and must not take a per-image slot): lvisctl's predictions hold
            # none, a results file from elsewhere may.
            recs = [r for r in recs if not is_empty_mask(r.get("segmentation"))]
            for rec in selector.select(image_id, recs):
                count += 1
                fh.write(
                    ("," if count > 1 else "") + json.dumps(annotation(count, rec), separators=(",", ":"))
                )
        fh.write('],"images":[')
        ids = (
            sorted(selector.images) if selector.mode == "unlabeled" else sorted(seen & selector.images.keys())
        )
        for k, image_id in enumerate(ids):
            fh.write(
                ("," if k else "")
                + json.dumps(image_record(selector.images[image_id]), separators=(",", ":"))
            )
        fh.write("]}\n")
    return count, len(ids)
