"""Detection post-processing of the RoI heads: per-class score threshold, per-class NMS, top-k."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import boxes as box_ops

PRE_NMS_TOPK = (
    5000  # device path: candidates kept before NMS (torchvision's own GPU limit of its offset trick)
)


@dataclass
class DetectionPostprocess:
    """Per-class score threshold, per-class NMS, top-k (LVIS: 1e-4, 0.5, 300).

    On CUDA (``sync_free``; None = on CUDA) the same steps run without a host sync per class: the best
    ``PRE_NMS_TOPK`` candidates by score, then one NMS with per-class coordinate offsets (float64, so
    classes never overlap). torchvision's ``batched_nms`` loops over the classes above 5000 boxes on a GPU
    (two syncs per class: ~1,200 per image for sigmoid/EQL scores); this path costs two per image.
    """

    score_thresh: float = 1e-4
    nms_thresh: float = 0.5
    detections_per_img: int = 300
    sync_free: bool | None = None

    def __call__(
        self, scores: Tensor, boxes: Tensor, counts: list[int], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """``scores`` [N, K], ``boxes`` [N, K, 4] of all images' RoIs (split by ``counts``)."""
        results = []
        num_classes = scores.shape[1]
        for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes, strict=True):
            b = box_ops.clip_boxes_to_image(b, size)
            labels = torch.arange(1, num_classes + 1, device=b.device).expand_as(s)
            b, s, labels = b.reshape(-1, 4), s.reshape(-1), labels.reshape(-1)
            if s.is_cuda if self.sync_free is None else self.sync_free:
                results.append(self._on_device(b, s, labels))
                continue
            keep = torch.where(s > self.score_thresh)[0]
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.batched_nms(b, s, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": labels[keep]})
        return results

    def _on_device(self, b: Tensor, s: Tensor, labels: Tensor) -> dict[str, Tensor]:
        if s.numel() == 0:
            return {"boxes": b, "scores": s, "labels": labels}
        wh = b[:, 2:] - b[:, :2]
        ok = (s > self.score_thresh) & (wh >= 1e-2).all(dim=1)
        ranked, idx = torch.where(ok, s, -1.0).topk(min(s.numel(), PRE_NMS_TOPK))
        b, labels = b[idx], labels[idx]
        offsets = labels.double() * (b.double().max() + 1)  # classes never overlap, in float64
        keep = box_ops.nms(b.double() + offsets[:, None], ranked.double(), self.nms_thresh)
        keep = keep[: self.detections_per_img]
        keep = keep[ranked[keep] >= 0]  # invalid candidates (-1) sort last: drop those that filled the top-k
        return {"boxes": b[keep], "scores": ranked[keep], "labels": labels[keep]}
