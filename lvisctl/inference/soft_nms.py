"""Class-wise NMS and Soft-NMS: the suppression layer of inference. :func:`class_nms` is the plain
multi-scale merge's and ``lvisctl ensemble --method nms``'s; :func:`soft_nms` (Bodla et al. 2017, vectorised
over classes) the paper's TTA merge's (section 3.3) and ``lvisctl ensemble --method soft-nms``'s.

It keeps the same boxes as ensemble-boxes' ``soft_nms`` but returns decayed scores where ensemble-boxes
returns the undecayed ones (see :func:`soft_nms`).
"""

from __future__ import annotations

import math

import torch

SOFT_NMS_METHODS = ("gaussian", "linear")


def class_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thresh: float
) -> torch.Tensor:
    """Class-wise NMS (torchvision's ``batched_nms``): indices of the kept boxes, best score first."""
    from torchvision.ops import batched_nms

    return batched_nms(boxes, scores, labels, iou_thresh)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_thresh: float = 0.3,
    score_thresh: float = 0.001,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise Soft-NMS (Bodla et al. 2017): ``(keep, new_scores)``.

    ``boxes`` float[N, 4] xyxy, ``scores`` float[N], ``labels`` int[N]. Within each class the highest
    remaining box is taken and every other remaining box's score decays by ``exp(-iou^2 / sigma)``
    (gaussian) or by ``1 - iou`` when ``iou > iou_thresh`` (linear); a box survives while its decayed
    score is above ``score_thresh``. ``keep`` are the survivors' indices in descending order of their
    decayed scores ``new_scores``.

    Against ensemble-boxes' ``soft_nms`` (ZFTurbo/Weighted-Boxes-Fusion, ``ensemble_boxes_nms.py``
    ``cpu_soft_nms_float`` / ``nms_method``): the same decay rules and threshold, so the same boxes are
    kept, but ensemble-boxes returns each kept box with its ORIGINAL score (``scores_by_label[keep]``),
    while this returns the DECAYED score, which is what the paper's merge ranks by (a box that survives
    only because Soft-NMS did not delete it ranks below the box that suppressed it).

    Vectorised over classes: all classes advance one step together, so the loop runs as many times as
    the largest class has boxes. Classes are batched by ceil(log2(count)), so padding at most doubles the
    work, and a batch's pairwise decay factors are computed once when they fit in memory.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft_nms method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    n = int(scores.numel())
    dtype = torch.promote_types(scores.dtype, torch.float32)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device), scores.new_zeros(0, dtype=dtype)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    _, cls, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    by_class = torch.argsort(cls, stable=True)  # box indices grouped by class
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(by_class)
    position[by_class] = torch.arange(n, device=labels.device) - starts[cls[by_class]]
    bucket = torch.ceil(torch.log2(counts.to(torch.float64))).long()
    final = torch.full((n,), -math.inf, dtype=dtype, device=scores.device)
    for b in torch.unique(bucket).tolist():
        classes = torch.nonzero(bucket == b).flatten()
        row_of = torch.full((counts.numel(),), -1, dtype=torch.int64, device=labels.device)
        row_of[classes] = torch.arange(classes.numel(), device=labels.device)
        members = torch.nonzero(row_of[cls] >= 0).flatten()
        width = int(counts[classes].max())
        index = torch.full((classes.numel(), width), -1, dtype=torch.int64, device=labels.device)
        index[row_of[cls[members]], position[members]] = members
        final_b = _soft_nms_padded(boxes, scores, index, method, sigma, iou_thresh, score_thresh)
        valid = index >= 0
        final[index[valid]] = final_b[valid]
    kept = torch.nonzero(final > score_thresh).flatten()
    order = torch.sort(final[kept], descending=True, stable=True).indices
    return kept[order], final[kept[order]]


def _soft_nms_padded(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    index: torch.Tensor,
    method: str,
    sigma: float,
    iou_thresh: float,
    score_thresh: float,
) -> torch.Tensor:
    """Soft-NMS of C classes at once. ``index`` [C, W] holds each class's box indices (-1 = padding).
    Returns [C, W] each box's score when it was taken (-inf for padding / boxes never taken)."""
    valid = index >= 0
    b = boxes[index.clamp(min=0)]  # [C, W, 4]
    current = torch.where(valid, scores[index.clamp(min=0)], torch.full_like(b[..., 0], -math.inf))
    taken = torch.full_like(current, -math.inf)
    # The decay factors of every pair, computed once, when they fit in memory; else row by row.
    decay_all = (
        _decay(b[:, :, None], b[:, None], method, sigma, iou_thresh)
        if b.shape[0] * b.shape[1] ** 2 <= _PAIRS_IN_MEMORY
        else None
    )
    rows = torch.arange(index.shape[0], device=index.device)
    for _ in range(index.shape[1]):
        best, arg = current.max(dim=1)
        active = best > score_thresh  # once a class's best is below the threshold, so is everything left
        if bool(active.all()):
            r, a = rows, arg
        elif bool(active.any()):
            r, a = rows[active], arg[active]
        else:
            break
        taken[r, a] = best[r]
        current[r, a] = -math.inf
        decay = (
            decay_all[r, a]
            if decay_all is not None
            else _decay(b[r, a][:, None], b[r], method, sigma, iou_thresh)
        )
        rest = current[r]
        current[r] = torch.where(torch.isfinite(rest), rest * decay, rest)  # -inf * 0 would be nan
    return taken


# Pairs (classes x boxes x boxes) up to which a Soft-NMS batch precomputes all decay factors.
_PAIRS_IN_MEMORY = 1 << 22


def _decay(a: torch.Tensor, b: torch.Tensor, method: str, sigma: float, iou_thresh: float) -> torch.Tensor:
    """Soft-NMS score factor of boxes ``b`` given the taken boxes ``a`` (broadcast, [..., 4])."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0)
    if method == "gaussian":
        return torch.exp(-(iou * iou) / sigma)
    return torch.where(iou > iou_thresh, 1 - iou, torch.ones_like(iou))
