"""RoI pooling shared by every RoI head: the one box -> RoI converter and the RoIAlign extractor.

Level choice is not made here: the callers pass per-RoI FPN levels (``lvisctl.modeling.mask_assign``
holds the box rule and Eq. 1), so the mask branch can pool from other levels than the box branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from lvisctl.modeling.fpn import FPN_STRIDES


def boxes_to_rois(boxes: Sequence[Tensor] | Tensor, like: Tensor | None = None) -> Tensor:
    """Per-image [N_i, 4] xyxy boxes -> [sum N_i, 5] (batch index, x1, y1, x2, y2); an [R, 5] tensor
    passes through. With ``like`` the result is float32 on ``like``'s device (what roi_align wants)."""
    if isinstance(boxes, Tensor):
        rois = boxes
    elif len(boxes) == 0:
        rois = torch.zeros((0, 5))
    else:
        rois = torch.cat(
            [torch.cat([b.new_full((b.shape[0], 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
        )
    if like is not None:
        rois = rois.to(device=like.device, dtype=torch.float32)
    return rois


class RoIAlignExtractor(nn.Module):
    """RoIAlign on one FPN level per RoI: ``(features P2..P5, boxes per image, levels[R]) -> [R, C, S, S]``.

    Unlike torchvision's ``MultiScaleRoIAlign`` the levels are an input, so the mask branch can use its
    own assignment. Same op, strides and sampling as torchvision's Mask R-CNN.
    """

    def __init__(self, output_size: int, sampling_ratio: int = 2, aligned: bool = False) -> None:
        super().__init__()
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features: list[Tensor], boxes: list[Tensor] | Tensor, levels: Tensor) -> Tensor:
        """``boxes``: per-image [N_i, 4] xyxy boxes, or already an [R, 5] (batch index, xyxy) tensor."""
        rois = boxes_to_rois(boxes, features[0])
        num_rois, channels = rois.shape[0], features[0].shape[1]
        result: Tensor | None = None
        for level, (feat, stride) in enumerate(zip(features, FPN_STRIDES, strict=True)):
            idx = torch.where(levels == level)[0]
            if idx.numel() == 0 and result is not None:
                continue
            out = roi_align(
                feat, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio, self.aligned
            )
            if result is None:  # dtype from the op: roi_align's autocast kernel decides it
                result = out.new_zeros((num_rois, channels, *self.output_size))
            result[idx] = out.to(result.dtype)
        assert result is not None
        return result
