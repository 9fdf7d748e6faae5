"""Model ensembling: fuse several models' detections of the same images, boxes and masks.

Boxes are fused class-wise per image with ensemble-boxes' weighted boxes fusion (default), or by NMS /
Soft-NMS over the members' concatenated detections. Masks: each fused detection's mask is the pixel-wise
weighted vote of the members' masks that were fused into it (weight = member score x model weight, the
weights WBF averages the boxes with), so segm results stay valid. ensemble-boxes returns only the fused
boxes, not which inputs formed each one, so :func:`wbf_clusters` runs its clustering loop with its own
``find_matching_box_fast`` / ``get_weighted_box`` and records the members (tests check the boxes and
scores equal ``weighted_boxes_fusion``'s). With ``nms`` / ``soft-nms`` a kept detection keeps its own mask.

Two entry points: :class:`EnsemblePredictor` (``tta-infer --checkpoint A --checkpoint B``: each model's
TTA output fused before writing) and :func:`ensemble_to_run_dir` (``lvisctl ensemble``: LVIS results
files, sharded over ``torchrun`` ranks and resumable by chunks like ``tta-infer``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lvisctl.errors import LvisctlError
from lvisctl.inference.predictor import Detections, top_k

METHODS = ("wbf", "nms", "soft-nms")


# ------------------------------------------------------------------------------ fusion
def wbf_clusters(
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    weights: Sequence[float],
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple[int, int, float]]]]:
    """ensemble-boxes' ``weighted_boxes_fusion`` (``conf_type='avg'``) on boxes normalised to [0, 1],
    plus each fused box's members ``[(model, index, score * weight), ...]``.

    Returns ``(boxes [F, 4], scores [F], labels [F], members)``, best score first, as ensemble-boxes does.
    """
    from ensemble_boxes.ensemble_boxes_wbf import find_matching_box_fast, get_weighted_box

    weights_arr = np.asarray(weights, dtype=np.float64)
    rows: dict[int, list[list[float]]] = defaultdict(list)
    origin: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for t, (b_t, s_t, l_t) in enumerate(zip(boxes, scores, labels, strict=True)):
        for j in range(len(s_t)):
            if s_t[j] < skip_box_thr:
                continue
            x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in b_t[j])
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
            if (x2 - x1) * (y2 - y1) == 0.0:
                continue
            label = int(l_t[j])
            rows[label].append([label, float(s_t[j]) * weights_arr[t], weights_arr[t], t, x1, y1, x2, y2])
            origin[label].append((t, j))
    fused_rows, members = [], []
    for label, label_rows in rows.items():
        arr = np.array(label_rows)
        order = arr[:, 1].argsort()[::-1]  # the same sort as ensemble-boxes' prefilter_boxes
        arr, src = arr[order], [origin[label][i] for i in order]
        clusters: list[list[np.ndarray]] = []
        cluster_members: list[list[tuple[int, int, float]]] = []
        weighted = np.empty((0, 8))
        for j in range(len(arr)):
            index, _ = find_matching_box_fast(weighted, arr[j], iou_thr)
            member = (src[j][0], src[j][1], float(arr[j][1]))
            if index != -1:
                clusters[index].append(arr[j])
                cluster_members[index].append(member)
                weighted[index] = get_weighted_box(clusters[index], "avg")
            else:
                clusters.append([arr[j].copy()])
                cluster_members.append([member])
                weighted = np.vstack((weighted, arr[j].copy()))
        for i, cluster in enumerate(clusters):
            weighted[i, 1] = weighted[i, 1] * min(len(weights_arr), len(cluster)) / weights_arr.sum()
        fused_rows.append(weighted)
        members.extend(cluster_members)
    if not fused_rows:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0), []
    overall = np.concatenate(fused_rows, axis=0)
    order = overall[:, 1].argsort()[::-1]
    return overall[order, 4:], overall[order, 1], overall[order, 0], [members[i] for i in order]


def vote_masks(
    members: Sequence[Sequence[tuple[int, int, float]]],
    masks: Sequence[torch.Tensor],
    image_size: tuple[int, int],
) -> torch.Tensor:
    """Pixel-wise weighted vote: fused mask = (sum of weight x member mask) / (sum of weights) >= 0.5."""
    out = torch.zeros((len(members), *image_size), dtype=torch.bool)
    for i, cluster in enumerate(members):
        total = sum(w for _, _, w in cluster)
        acc = torch.zeros(image_size, dtype=torch.float64)
        for t, j, w in cluster:
            acc += w * masks[t][j].to(torch.float64)
        out[i] = acc >= 0.5 * total if total > 0 else masks[cluster[0][0]][cluster[0][1]]
    return out


def fuse_detections(
    members: Sequence[Detections],
    image_size: tuple[int, int],
    *,
    weights: Sequence[float] | None = None,
    method: str = "wbf",
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    k: int = 300,
) -> Detections:
    """Fuse several models' detections of one image (``boxes`` xyxy in pixels, ``scores``, ``labels``,
    bool ``masks`` [N, H, W], optional ``mask_scores``) into one set of at most ``k``, best first."""
    if method not in METHODS:
        raise LvisctlError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    if method == "wbf":
        fused = _fuse_wbf(members, weights, scale, image_size, iou_thr, skip_box_thr)
    else:
        fused = _fuse_suppress(members, weights, method, iou_thr)
    return top_k(fused, k)


def _fuse_wbf(members, weights, scale, image_size, iou_thr, skip_box_thr) -> Detections:
    norm = [(m["boxes"].double() / scale).numpy() for m in members]
    boxes, scores, labels, clusters = wbf_clusters(
        norm,
        [m["scores"].double().numpy() for m in members],
        [m["labels"].numpy() for m in members],
        weights,
        iou_thr,
        skip_box_thr,
    )
    out = {
        "boxes": torch.from_numpy(boxes.copy()).float() * scale.float(),
        "scores": torch.from_numpy(scores.copy()).float(),
        "labels": torch.from_numpy(labels.copy()).long(),
        "masks": vote_masks(clusters, [m["masks"] for m in members], image_size),
    }
    if all("mask_scores" in m for m in members):  # the mask-IoU ratio, averaged like the scores
        ratio = []
        for cluster in clusters:
            total = sum(w for _, _, w in cluster)
            ratio.append(
                sum(w * _mask_ratio(members[t], j) for t, j, w in cluster) / total if total > 0 else 1.0
            )
        out["mask_scores"] = (out["scores"] * torch.tensor(ratio, dtype=torch.float32)).clamp(0, 1)
    return out


def _mask_ratio(member: Detections, j: int) -> float:
    return float(member["mask_scores"][j]) / max(float(member["scores"][j]), 1e-12)


def _fuse_suppress(members, weights, method, iou_thr) -> Detections:
    """NMS / Soft-NMS over the concatenated members, scores scaled by weight / max weight."""
    from torchvision.ops import batched_nms

    from lvisctl.inference.tta import soft_nms

    top = max(weights)
    keys = set.intersection(*(set(m) for m in members))
    merged = {key: torch.cat([m[key] for m in members]) for key in keys}
    factor = torch.cat(
        [torch.full((m["scores"].numel(),), w / top) for m, w in zip(members, weights, strict=True)]
    )
    scores = merged["scores"].float() * factor
    if method == "nms":
        keep = batched_nms(merged["boxes"].float(), scores, merged["labels"], iou_thr)
        new_scores = scores[keep]
    else:
        keep, new_scores = soft_nms(merged["boxes"], scores, merged["labels"])
    out = {key: value[keep] for key, value in merged.items()}
    if "mask_scores" in out:
        out["mask_scores"] = (
            out["mask_scores"].float() * factor[keep] * new_scores / scores[keep].clamp(min=1e-12)
        ).clamp(0, 1)
    out["scores"] = new_scores
    return out


@dataclass(frozen=True)
class EnsembleSettings:
    """``inference.ensemble`` of the config: how ``tta-infer --checkpoint A --checkpoint B`` fuses."""

    method: str = "wbf"
    iou: float = 0.55
    skip_score: float = 0.0
    weights: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, ens_cfg: Mapping[str, Any]) -> EnsembleSettings:
        return cls(
            method=str(ens_cfg["method"]),
            iou=float(ens_cfg["iou"]),
            skip_score=float(ens_cfg["skip_score"]),
            weights=tuple(float(w) for w in ens_cfg["weights"]),
        )


class EnsemblePredictor:
    """Several predictors (one per checkpoint) whose per-image outputs are fused by :func:`fuse_detections`;
    the same ``predict_batch`` interface as :class:`lvisctl.inference.predictor.Predictor`."""

    def __init__(
        self, predictors: Sequence[Any], settings: EnsembleSettings, detections_per_image: int = 300
    ):
        if settings.weights and len(settings.weights) != len(predictors):
            raise LvisctlError(
                f"inference.ensemble.weights: {len(settings.weights)} weights for "
                f"{len(predictors)} checkpoints"
            )
        if settings.method not in METHODS:
            raise LvisctlError(f"inference.ensemble.method: {settings.method!r} is not one of {METHODS}")
        self.predictors = list(predictors)
        self.settings = settings
        self.detections_per_image = detections_per_image

    def predict(self, image: torch.Tensor) -> Detections:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        outputs = [p.predict_batch(images) for p in self.predictors]
        return [
            fuse_detections(
                [out[i] for out in outputs],
                tuple(image.shape[-2:]),
                weights=self.settings.weights or None,
                method=self.settings.method,
                iou_thr=self.settings.iou,
                skip_box_thr=self.settings.skip_score,
                k=self.detections_per_image,
            )
            for i, image in enumerate(images)
        ]
