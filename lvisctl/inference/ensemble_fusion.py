"""Model ensembling: fuse several models' detections of the same image, boxes and masks.

Boxes are fused class-wise per image with ensemble-boxes' weighted boxes fusion (default), or by NMS /
Soft-NMS over the members' concatenated detections. Masks: each fused detection's mask is the pixel-wise
weighted vote of the members' masks that were fused into it (weight = member score x model weight, the
weights WBF averages the boxes with), so segm results stay valid. ensemble-boxes returns only the fused
boxes, not which inputs formed each one, so :func:`wbf_clusters` runs its clustering loop with its own
``find_matching_box_fast`` / ``get_weighted_box`` and records the members (tests check the boxes and
scores equal ``weighted_boxes_fusion``'s). With ``nms`` / ``soft-nms`` a kept detection keeps its own mask.

Two users: :class:`EnsemblePredictor` (``tta-infer --checkpoint A --checkpoint B``: each model's TTA
output fused before writing, built by :mod:`lvisctl.inference.factory`) and
:class:`lvisctl.inference.ensemble.EnsembleJob` (``lvisctl ensemble``: fuses results files).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lvisctl.errors import LvisctlError
from lvisctl.inference.detections import Detections, concat, full_masks, select, top_k
from lvisctl.inference.soft_nms import class_nms, soft_nms

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
    regions: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Pixel-wise weighted vote: fused mask = (sum of weight x member mask) / (sum of weights) >= 0.5.

    A lone member's mask is copied; otherwise the vote runs inside the bounding box of the members' pixels
    (``regions``: each member's mask boxes ``[N, 4]`` xywh, e.g. RLE ``toBbox``; computed when absent).
    The result is column-major in memory (like RLE), so encoding it needs no transposing copy.
    """
    height, width = image_size
    out = torch.zeros((len(members), width, height), dtype=torch.bool).transpose(1, 2)
    if regions is None:
        regions = [_mask_boxes(m) for m in masks]
    for i, cluster in enumerate(members):
        if len(cluster) == 1:
            out[i] = masks[cluster[0][0]][cluster[0][1]]
            continue
        boxes = torch.stack([regions[t][j] for t, j, _ in cluster]).float()
        boxes = boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)]
        if boxes.numel() == 0:
            continue
        x0, y0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
        x1, y1 = (
            int(math.ceil((boxes[:, 0] + boxes[:, 2]).max())),
            int(math.ceil((boxes[:, 1] + boxes[:, 3]).max())),
        )
        stack = torch.stack([masks[t][j, y0:y1, x0:x1] for t, j, _ in cluster])
        weights = torch.tensor([w for _, _, w in cluster], dtype=torch.float64)
        votes = torch.einsum("m,mhw->hw", weights, stack.to(torch.float64))
        out[i, y0:y1, x0:x1] = votes >= 0.5 * weights.sum()
    return out


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """xywh boxes of the pixels of bool masks [N, H, W] (0 x 0 for an empty mask)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    out = torch.zeros((masks.shape[0], 4))
    for j in range(masks.shape[0]):
        ys, xs = torch.nonzero(rows[j]).flatten(), torch.nonzero(cols[j]).flatten()
        if ys.numel():
            out[j] = torch.tensor([xs[0], ys[0], xs[-1] + 1 - xs[0], ys[-1] + 1 - ys[0]], dtype=torch.float32)
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
    bool ``masks`` [N, H, W] or the predictor's RoI-level ``mask_probs``, optional ``mask_scores``) into
    one set of at most ``k``, best first. WBF votes on whole masks (pasted here when the members are
    RoI-level); NMS / Soft-NMS keep each survivor's own mask as it came (RoI-level stays RoI-level)."""
    if method not in METHODS:
        raise LvisctlError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    if method == "wbf":
        fused = _fuse_wbf(members, weights, scale, image_size, iou_thr, skip_box_thr, k)
    else:
        fused = _fuse_suppress(members, weights, method, iou_thr)
    return top_k(fused, k)


def with_cap(fused: Detections, cap: int) -> Detections:
    """``fused`` with the per-image ``cap`` a results writer stops at (the rest are spares that refill the
    slots of masks that come out empty; the fusion's top-k truncates last, so the first ``cap`` are
    the fusion of ``k=cap``)."""
    return {**fused, "cap": torch.tensor(cap)}


def _fuse_wbf(members, weights, scale, image_size, iou_thr, skip_box_thr, k) -> Detections:
    norm = [(m["boxes"].double() / scale).numpy() for m in members]
    boxes, scores, labels, clusters = wbf_clusters(
        norm,
        [m["scores"].double().numpy() for m in members],
        [m["labels"].numpy() for m in members],
        weights,
        iou_thr,
        skip_box_thr,
    )
    boxes, scores, labels, clusters = boxes[:k], scores[:k], labels[:k], clusters[:k]  # best first: vote k
    masks, regions = _member_masks(members)
    out = {
        "boxes": torch.from_numpy(boxes.copy()).float() * scale.float(),
        "scores": torch.from_numpy(scores.copy()).float(),
        "labels": torch.from_numpy(labels.copy()).long(),
        "masks": vote_masks(clusters, masks, image_size, regions),
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


def _member_masks(members: Sequence[Detections]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Each member's whole masks for the vote, and where their pixels are (xywh; None: compute them)."""
    if all("masks" in m for m in members):
        regions = [m["mask_boxes"] for m in members] if all("mask_boxes" in m for m in members) else None
        return [m["masks"] for m in members], regions
    from lvisctl.inference.postprocess import paste_masks

    masks, regions = [], []
    for m in members:
        if "masks" in m:
            masks.append(full_masks(m))
            regions.append(_mask_boxes(masks[-1]))
            continue
        pasted, places = paste_masks(
            m["mask_probs"],
            m.get("paste_boxes", m["boxes"]),
            tuple(m["image_size"].tolist()),
            float(m.get("mask_thresh", 0.5)),
        )
        masks.append(pasted)
        xyxy = torch.from_numpy(places).float()  # each pasted mask lies inside its place
        regions.append(torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1))
    return masks, regions


def _mask_ratio(member: Detections, j: int) -> float:
    return float(member["mask_scores"][j]) / max(float(member["scores"][j]), 1e-12)


def _fuse_suppress(members, weights, method, iou_thr) -> Detections:
    """NMS / Soft-NMS over the concatenated members, scores scaled by weight / max weight."""
    top = max(weights)
    merged = concat(_same_mask_kind(members))
    factor = torch.cat(
        [torch.full((m["scores"].numel(),), w / top) for m, w in zip(members, weights, strict=True)]
    )
    scores = merged["scores"].float() * factor
    if method == "nms":
        keep = class_nms(merged["boxes"].float(), scores, merged["labels"], iou_thr)
        new_scores = scores[keep]
    else:
        keep, new_scores = soft_nms(merged["boxes"], scores, merged["labels"])
    out = select(merged, keep)
    if "mask_scores" in out:
        out["mask_scores"] = (
            out["mask_scores"].float() * factor[keep] * new_scores / scores[keep].clamp(min=1e-12)
        ).clamp(0, 1)
    out["scores"] = new_scores
    return out


def _same_mask_kind(members: Sequence[Detections]) -> list[Detections]:
    """The members as they are when their masks can be concatenated (all RoI-level of one size, or all
    whole masks); otherwise every member with whole ``masks`` (e.g. models of different mask sizes)."""
    sizes = {tuple(m["mask_probs"].shape[1:]) if "mask_probs" in m else None for m in members}
    if len(sizes) == 1:
        return list(members)
    whole = []
    for m in members:
        rest = {
            k: v for k, v in m.items() if k not in ("mask_probs", "paste_boxes", "image_size", "mask_thresh")
        }
        whole.append({**rest, "masks": full_masks(m)})
    return whole


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
        self.spares = 0  # fused candidates kept beyond the cap for a results writer (writing_spares)

    @property
    def device(self) -> torch.device:
        """The first model's device (where the images are copied once for all models)."""
        return torch.device(getattr(self.predictors[0], "device", "cpu"))

    def predict(self, image: torch.Tensor) -> Detections:
        return self.predict_batch([image])[0]

    @property
    def empty_dropped(self) -> int:
        """Surely-empty masks the member predictors left out before their caps."""
        return sum(int(getattr(p, "empty_dropped", 0)) for p in self.predictors)

    def predict_batch(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        images = [img.to(self.device, non_blocking=img.is_pinned()) for img in images]
        outputs = [p.predict_batch(images) for p in self.predictors]  # each member at most its cap
        fused = [
            fuse_detections(
                [out[i] for out in outputs],
                tuple(image.shape[-2:]),
                weights=self.settings.weights or None,
                method=self.settings.method,
                iou_thr=self.settings.iou,
                skip_box_thr=self.settings.skip_score,
                k=self.detections_per_image + self.spares,
            )
            for i, image in enumerate(images)
        ]
        return [with_cap(f, self.detections_per_image) if self.spares else f for f in fused]
