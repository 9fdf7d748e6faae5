"""Training RoIs of one RoI-head stage: match proposals to ground truth at the stage's IoU threshold,
sample a fixed number with a foreground fraction, and the self-training hooks of paper 2.1.

Built from torchvision's ``Matcher`` and ``BalancedPositiveNegativeSampler`` (Mask R-CNN's rule: IoU >=
``fg_iou_thresh`` foreground, < ``bg_iou_thresh`` background, no low-quality matches). Every RoI-head type
uses one ``ProposalSampler`` per stage (a cascade's stages differ only in the threshold: 0.5 / 0.6 / 0.7).

Self-training: background proposals with IoU >= ``ignore_iou`` with a ``target["ignore_boxes"]`` box are
excluded before sampling (they send no classification gradient), and ``target["loss_weight"]`` scales every
loss term of that image (``proposal_weights`` for per-RoI losses, ``image_weighted`` for per-batch ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou


@dataclass
class RoISamples:
    """Sampled training RoIs, per image."""

    boxes: list[Tensor]  # [n_i, 4] xyxy
    matched: list[Tensor]  # index of the matched GT box (0 for background when the image has none)
    labels: list[Tensor]  # contiguous class, 0 = background
    is_gt: list[Tensor]  # bool: the RoI is a GT box added to the proposals

    def positive_index(self) -> list[Tensor]:
        return [torch.where(lab > 0)[0] for lab in self.labels]

    def matched_gt_boxes(self, targets: list[dict[str, Tensor]]) -> list[Tensor]:
        """The GT box each RoI is matched to (a zero box for images without GT; only positives use it)."""
        out = []
        for b, m, t in zip(self.boxes, self.matched, targets, strict=True):
            gt = t["boxes"].to(b) if t["boxes"].numel() else b.new_zeros((1, 4))
            out.append(gt[m])
        return out


class ProposalSampler:
    def __init__(
        self,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        ignore_iou: float = 0.5,
    ) -> None:
        self.fg_iou_thresh = fg_iou_thresh
        self.matcher = det_utils.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.ignore_iou = ignore_iou

    def match(self, proposals: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per proposal: matched GT index (clamped) and label (0 background, -1 not sampled)."""
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        n = proposals.shape[0]
        if gt_boxes.numel() == 0:
            matched = torch.zeros(n, dtype=torch.int64, device=proposals.device)
            labels = torch.zeros(n, dtype=torch.int64, device=proposals.device)
        else:
            idx = self.matcher(box_iou(gt_boxes.to(proposals), proposals))
            matched = idx.clamp(min=0)
            labels = gt_labels[matched].to(torch.int64)
            labels[idx == self.matcher.BELOW_LOW_THRESHOLD] = 0
            labels[idx == self.matcher.BETWEEN_THRESHOLDS] = -1
        ignore = target.get("ignore_boxes")
        if ignore is not None and ignore.numel() > 0:
            labels[ignore_overlaps(proposals, labels, ignore.to(proposals), self.ignore_iou)] = -1
        return matched, labels

    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> RoISamples:
        """Add the GT boxes to the proposals (as Mask R-CNN and mmdet's ``add_gt_as_proposals``), match,
        sample."""
        with_gt, is_gt = [], []
        for p, t in zip(proposals, targets, strict=True):
            gt = t["boxes"].to(p)
            with_gt.append(torch.cat([p, gt]))
            is_gt.append(
                torch.cat(
                    [p.new_zeros(p.shape[0], dtype=torch.bool), gt.new_ones(gt.shape[0], dtype=torch.bool)]
                )
            )
        matched, labels = zip(*(self.match(p, t) for p, t in zip(with_gt, targets, strict=True)), strict=True)
        pos, neg = self.sampler(list(labels))
        keep = [torch.where(ps | ng)[0] for ps, ng in zip(pos, neg, strict=True)]
        return RoISamples(
            boxes=[p[k] for p, k in zip(with_gt, keep, strict=True)],
            matched=[m[k] for m, k in zip(matched, keep, strict=True)],
            labels=[lab[k] for lab, k in zip(labels, keep, strict=True)],
            is_gt=[g[k] for g, k in zip(is_gt, keep, strict=True)],
        )


def ignore_overlaps(proposals: Tensor, labels: Tensor, ignore_boxes: Tensor, thresh: float) -> Tensor:
    """Mask of background proposals (label 0) whose IoU with some ignore box is >= ``thresh``."""
    if ignore_boxes.numel() == 0 or proposals.numel() == 0:
        return torch.zeros_like(labels, dtype=torch.bool)
    best = box_iou(proposals, ignore_boxes).max(dim=1).values
    return (labels == 0) & (best >= thresh)


def image_weights(targets: list[dict[str, Tensor]]) -> list[float]:
    return [float(t.get("loss_weight", 1.0)) for t in targets]


def proposal_weights(targets: list[dict[str, Tensor]], labels: list[Tensor]) -> Tensor | None:
    """Each sampled proposal carries its image's ``loss_weight``; None when all are 1 (the common case)."""
    weights = image_weights(targets)
    if all(w == 1.0 for w in weights):
        return None
    return torch.cat(
        [torch.full((lab.numel(),), w, device=lab.device) for lab, w in zip(labels, weights, strict=True)]
    )


def image_weighted(
    loss_fn: Callable[..., Tensor], counts: list[int], weights: list[float], *rows: Tensor
) -> Tensor:
    """A per-RoI-batch loss with self-training image weights: ``loss_fn(*rows)`` when every weight is 1,
    else sum_i w_i n_i L_i / sum_i n_i over images i with n_i > 0 RoIs (``rows`` are split by ``counts``)."""
    if all(w == 1.0 for w in weights):
        return loss_fn(*rows)
    total, parts = max(sum(counts), 1), []
    for w, n, *chunks in zip(weights, counts, *(r.split(counts) for r in rows), strict=True):
        if n:
            parts.append(loss_fn(*chunks) * (w * n / total))
    return torch.stack(parts).sum() if parts else rows[0].sum() * 0
