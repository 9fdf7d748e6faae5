"""What a pseudo-label file holds, and how the scores behind it are summarised.

LVIS v1 records made from results records (``bbox``, RLE ``segmentation``, ``area`` of the mask, ``score``),
the image records of a pseudo-label file, the score distribution printed when few labels survive
(:class:`ScoreSample`), and the recall of known missing annotations (:func:`missing_recall`, benchmarks).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torchvision.ops import box_iou

QUANTILES = (0.5, 0.9, 0.99)


def area_of(rec: Mapping[str, Any]) -> float:
    seg = rec.get("segmentation")
    if isinstance(seg, dict) and "counts" in seg:
        from pycocotools import mask as mask_utils

        counts = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
        return float(mask_utils.area({"size": list(seg["size"]), "counts": counts}))
    return float(rec["bbox"][2] * rec["bbox"][3])


def annotation(ann_id: int, rec: Mapping[str, Any]) -> dict[str, Any]:
    ann = {
        "id": ann_id,
        "image_id": int(rec["image_id"]),
        "category_id": int(rec["category_id"]),
        "bbox": [float(v) for v in rec["bbox"]],
        "area": area_of(rec),
        "score": float(rec["score"]),
    }
    if "segmentation" in rec:
        ann["segmentation"] = rec["segmentation"]
    return ann


def image_record(img: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **{k: img[k] for k in ("id", "width", "height") if k in img},
        **{k: img[k] for k in ("coco_url", "file_name") if k in img},
        "neg_category_ids": [],
        "not_exhaustive_category_ids": [],
    }


def file_info(source: str, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    # provenance: the sha256 of the annotation file and checkpoint the labels were made from; train
    # compares the first with data.train (labels of another dataset would land on unrelated images)
    return {
        "description": f"lvisctl pseudo labels ({source})",
        "pseudo_label_source": source,
        **(provenance or {}),
    }


def pseudo_label_file(
    images: Sequence[Mapping[str, Any]],
    records: Iterable[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    *,
    source: str,
) -> dict[str, Any]:
    """Assemble an LVIS-format json from LVIS results records (``image_id``, ``category_id``, ``bbox``,
    ``score``, optional ``segmentation``; ``area`` is the mask's, else the box's). ``source`` is
    ``"missing"`` or ``"unlabeled"``."""
    return {
        "info": file_info(source),
        "images": [image_record(img) for img in images],
        "annotations": [annotation(i, rec) for i, rec in enumerate(records, start=1)],
        "categories": [dict(c) for c in categories],
    }


def group_by_image(records: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, list[Mapping[str, Any]]]]:
    """Consecutive records of the same image (results files list each image's detections together)."""
    for image_id, group in itertools.groupby(records, key=lambda r: int(r["image_id"])):
        yield image_id, list(group)


class ScoreSample:
    """Predicted scores, overall and per frequency group, in bounded memory: exact counts and maxima, and
    a uniform sample (reservoir, seeded) of up to ``capacity`` scores per group for the quantiles (exact
    below that)."""

    def __init__(self, frequency: Mapping[int, str], capacity: int = 200_000) -> None:
        import numpy as np

        self.frequency, self.capacity = frequency, capacity
        self.rng = np.random.default_rng(0)
        self.samples: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        self.maxima: dict[str, float] = {}

    def add(self, recs: Iterable[Mapping[str, Any]]) -> None:
        for rec in recs:
            score = float(rec["score"])
            for key in ("all", self.frequency.get(int(rec["category_id"]), "?")):
                self._add(key, score)

    def _add(self, key: str, score: float) -> None:
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        self.maxima[key] = max(self.maxima.get(key, score), score)
        sample = self.samples.setdefault(key, [])
        if len(sample) < self.capacity:
            sample.append(score)
        else:
            j = int(self.rng.integers(n))
            if j < self.capacity:
                sample[j] = score

    def lines(self) -> list[str]:
        """The distribution, as :func:`score_distribution` prints it."""
        if not self.counts.get("all"):
            return ["the model predicted nothing on these images"]
        lines = ["predicted scores: " + self._text("all")]
        lines += [f"  {g}: " + self._text(g) for g in "rcf" if self.counts.get(g)]
        return lines

    def _text(self, key: str) -> str:
        scores = torch.tensor(self.samples[key], dtype=torch.float64)
        qs = torch.quantile(scores, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        parts = [f"p{round(q * 100)} {v:.3f}" for q, v in zip(QUANTILES, qs, strict=True)]
        return f"{self.counts[key]} detections, " + ", ".join(parts) + f", max {self.maxima[key]:.3f}"


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    out = boxes.clone()
    out[:, 2:] += out[:, :2]
    return out


def score_distribution(predictions: Iterable[Mapping[str, Any]], frequency: Mapping[int, str]) -> list[str]:
    """Quantiles of the predicted scores, overall and per frequency group (why few labels survived)."""
    sample = ScoreSample(frequency)
    sample.add(predictions)
    return sample.lines()


def missing_recall(
    pseudo_labels: Sequence[Mapping[str, Any]], hidden: Sequence[Mapping[str, Any]], *, iou: float = 0.5
) -> float:
    """Fraction of known unannotated instances (``hidden``: LVIS annotations) covered by a pseudo label of
    the same image with box IoU >= ``iou`` (any category: an ignore region ignores every class)."""
    if not hidden:
        return float("nan")
    by_image: dict[int, list[list[float]]] = {}
    for ann in pseudo_labels:
        by_image.setdefault(int(ann["image_id"]), []).append(list(ann["bbox"]))
    found = 0
    for ann in hidden:
        boxes = by_image.get(int(ann["image_id"]))
        if boxes:
            ious = box_iou(
                xywh_to_xyxy(torch.tensor([ann["bbox"]], dtype=torch.float32)),
                xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32)),
            )
            found += int(ious.max().item() >= iou)
    return found / len(hidden)
