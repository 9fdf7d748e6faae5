"""Deformable RoI pooling (Dai et al., "Deformable Convolutional Networks", ICCV 2017), mmcv
``DeformRoIPoolPack`` style, in pure PyTorch on top of torchvision ops.

For each RoI:
 1. plain RoI-align to a k x k grid (``torchvision.ops.roi_align``);
 2. an offset predictor (fc 1024 - ReLU - fc 1024 - ReLU - fc 2k^2, as mmcv's ``DeformRoIPoolPack``; the last
    layer is initialised to zero, so training starts from plain RoI-align) maps those features to one
    normalised offset (dx, dy) per bin;
 3. each bin is shifted by ``gamma * (dx * roi_w, dy * roi_h)`` (gamma = 0.1) and pooled again: the mean of
    ``sampling_ratio``^2 bilinear samples inside the shifted bin, the same sampling points and border rules
    as ``torchvision.ops.roi_align``. The bilinear sampling is ``F.grid_sample`` (``align_corners=True`` on
    pixel centres, ``padding_mode="border"`` plus a zero mask outside [-1, W] x [-1, H]), which reproduces
    roi_align exactly with zero offsets and gives gradients to the offsets (roi_align itself has none w.r.t.
    box coordinates).

Multi-level FPN: each RoI is pooled from one level (given per RoI, or the box-scale rule of
``mask_assign.box_levels`` when not given). One offset predictor is shared across levels by default
(``per_level_offsets=False``): offsets are normalised by the RoI size, so they are scale-free, and a
per-level copy (as mmdet's ``SingleRoIExtractor`` builds, one ``DeformRoIPoolPack`` per level) would
quadruple an fc of C*k*k x 1024 weights. ``per_level_offsets=True`` gives the mmdet layout.

How it plugs in: ``DeformRoIPool`` is a drop-in for ``torchvision.ops.MultiScaleRoIAlign`` as the core's RoI
feature extractor hook: ``forward(features, boxes, image_shapes=None, levels=None)`` with ``features`` the
FPN dict (keys ``featmap_names``) or a list, ``boxes`` a list of per-image xyxy boxes or an N x 5
``(batch_index, x1, y1, x2, y2)`` tensor. ``levels`` lets the mask path use Eq. 1 levels
(``mask_assign.assign_mask_levels``). Config switch: ``model.roi_heads.roi_pool: align | deform`` (the core
uses it for the box branch; the mask branch keeps RoIAlign); keys ``model.roi_heads.deform_gamma`` (0.1)
and ``model.roi_heads.deform_hidden_channels`` (1024).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from lvisctl.modeling.mask_assign import box_areas, box_levels
from lvisctl.modeling.poolers import boxes_to_rois


def _bin_sample_points(
    rois: Tensor,
    offsets: Tensor | None,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    aligned: bool,
) -> tuple[Tensor, Tensor]:
    """x and y sampling coordinates (feature-map pixels), each N x k x k x s x s."""
    shift = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - shift
    y1 = rois[:, 2] * spatial_scale - shift
    roi_w = rois[:, 3] * spatial_scale - shift - x1
    roi_h = rois[:, 4] * spatial_scale - shift - y1
    if not aligned:  # torchvision forces malformed RoIs to 1 x 1 in the legacy (non-aligned) mode
        roi_w = roi_w.clamp_min(1.0)
        roi_h = roi_h.clamp_min(1.0)
    k, s = output_size, sampling_ratio
    grid = torch.arange(k, device=rois.device, dtype=rois.dtype)
    sub = (torch.arange(s, device=rois.device, dtype=rois.dtype) + 0.5) / s
    bin_w, bin_h = (roi_w / k)[:, None, None, None, None], (roi_h / k)[:, None, None, None, None]
    # sample positions indexed [n, ph, pw, iy, ix]: bin origin + sub-bin centre, scaled by the bin size
    xs = (
        x1[:, None, None, None, None]
        + (grid[None, None, :, None, None] + sub[None, None, None, None, :]) * bin_w
    )
    ys = (
        y1[:, None, None, None, None]
        + (grid[None, :, None, None, None] + sub[None, None, None, :, None]) * bin_h
    )
    if offsets is not None:
        xs = xs + (gamma * roi_w[:, None, None] * offsets[:, 0])[..., None, None]
        ys = ys + (gamma * roi_h[:, None, None] * offsets[:, 1])[..., None, None]
    shape = (rois.shape[0], k, k, s, s)
    return xs.expand(shape), ys.expand(shape)


def deform_roi_align(
    feature: Tensor,
    rois: Tensor,
    offsets: Tensor | None,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int = 2,
    gamma: float = 0.1,
    aligned: bool = False,
) -> Tensor:
    """RoI-align with per-bin offsets on one feature map.

    ``feature`` B x C x H x W; ``rois`` N x 5 (batch index, xyxy in image pixels); ``offsets`` N x 2 x k x k
    normalised (dx, dy) per bin or None. Returns N x C x k x k. ``sampling_ratio`` must be >= 1 (the
    adaptive mode of roi_align would give each RoI its own number of samples).
    """
    if sampling_ratio < 1:
        raise ValueError("deform_roi_align needs a fixed sampling_ratio >= 1")
    num, channels = rois.shape[0], feature.shape[1]
    k, s = output_size, sampling_ratio
    # Sampling runs in (at least) float32, like roi_align under autocast: fp16 pixel coordinates would be
    # off by up to a pixel on large images.
    dtype = torch.promote_types(feature.dtype, torch.float32)
    if num == 0:
        return feature.new_zeros((0, channels, k, k), dtype=dtype) + feature.sum() * 0.0
    height, width = feature.shape[-2:]
    offsets = None if offsets is None else offsets.to(dtype)
    xs, ys = _bin_sample_points(rois.to(dtype), offsets, k, spatial_scale, s, gamma, aligned)
    # roi_align returns 0 for samples beyond one pixel outside the map and clamps the rest to the border.
    inside = ((ys >= -1.0) & (ys <= height) & (xs >= -1.0) & (xs <= width)).to(dtype)
    norm_x = xs * (2.0 / max(width - 1, 1)) - 1.0
    norm_y = ys * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack([norm_x, norm_y], dim=-1).reshape(num, k * k * s * s, 2)
    batch_index = rois[:, 0].long()
    out = feature.new_zeros((num, channels, k, k), dtype=dtype)
    for b in torch.unique(batch_index).tolist():
        rows = (batch_index == b).nonzero(as_tuple=True)[0]
        samples = F.grid_sample(
            feature[b : b + 1].to(dtype),
            grid[rows][None],
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )[0]  # C x n x P
        samples = (samples * inside[rows].reshape(1, rows.shape[0], -1)).to(dtype)
        values = samples.reshape(channels, rows.shape[0], k, k, s * s).mean(dim=-1)
        out = out.index_copy(0, rows, values.permute(1, 0, 2, 3))
    return out


class DeformRoIPool(nn.Module):
    """Multi-level deformable RoI pooling with a learned per-bin offset predictor."""

    # the FPN dict keys of P2..P5 (torchvision's BackboneWithFPN names); a dict input is read in this order
    featmap_names: tuple[str, ...] = ("0", "1", "2", "3")

    def __init__(
        self,
        in_channels: int,
        output_size: int = 7,
        strides: Sequence[int] = (4, 8, 16, 32),
        sampling_ratio: int = 2,
        gamma: float = 0.1,
        hidden_channels: int = 1024,
        aligned: bool = False,
        per_level_offsets: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.strides = tuple(strides)
        self.sampling_ratio = sampling_ratio
        self.gamma = gamma
        self.aligned = aligned
        num_predictors = len(self.strides) if per_level_offsets else 1
        self.offset_fcs = nn.ModuleList(
            self._offset_predictor(
                in_channels * output_size * output_size, hidden_channels, 2 * output_size**2
            )
            for _ in range(num_predictors)
        )

    @staticmethod
    def _offset_predictor(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
        last = nn.Linear(hidden, out_features)
        nn.init.zeros_(last.weight)  # zero offsets at start: identical to plain RoI-align
        nn.init.zeros_(last.bias)
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            last,
        )

    def _levels_list(self, features: Mapping[str, Tensor] | Sequence[Tensor]) -> list[Tensor]:
        if isinstance(features, Mapping):
            return [features[name] for name in self.featmap_names]
        return list(features)

    def forward(
        self,
        features: Mapping[str, Tensor] | Sequence[Tensor],
        boxes: Sequence[Tensor] | Tensor,
        image_shapes: Sequence[tuple[int, int]] | None = None,
        levels: Tensor | None = None,
    ) -> Tensor:
        """Pool each RoI from its level. ``image_shapes`` is accepted for MultiScaleRoIAlign compatibility
        and unused (the scales come from ``strides``). Returns N x C x k x k in the order of ``boxes``."""
        feats = self._levels_list(features)
        if len(feats) != len(self.strides):
            raise ValueError(f"got {len(feats)} feature maps for {len(self.strides)} strides")
        rois = boxes_to_rois(boxes).to(device=feats[0].device, dtype=torch.float32)
        if levels is None:
            levels = box_levels(box_areas(rois[:, 1:]), max_level=len(self.strides) - 1)
        elif levels.numel() and (int(levels.min()) < 0 or int(levels.max()) >= len(self.strides)):
            raise ValueError(f"levels must lie in 0..{len(self.strides) - 1}")
        k = self.output_size
        dtype = torch.promote_types(feats[0].dtype, torch.float32)  # as deform_roi_align returns
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], k, k), dtype=dtype)
        for level, (feat, stride) in enumerate(zip(feats, self.strides, strict=True)):
            rows = (levels == level).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                out = out + feat.sum() * 0.0  # keep every level in the graph for DDP
                continue
            pooled = self._pool_level(feat, rois[rows], 1.0 / stride, level)
            out = out.index_copy(0, rows, pooled.to(dtype))
        # A zero term touching every offset parameter: levels (or batches) without RoIs must not leave
        # parameters without gradient, which DistributedDataParallel rejects.
        return out + sum(p.view(-1)[0] for p in self.offset_fcs.parameters()) * 0.0

    def _pool_level(self, feat: Tensor, rois: Tensor, scale: float, level: int) -> Tensor:
        k, s = self.output_size, self.sampling_ratio
        plain = roi_align(feat, rois, (k, k), spatial_scale=scale, sampling_ratio=s, aligned=self.aligned)
        predictor = self.offset_fcs[level if len(self.offset_fcs) > 1 else 0]
        offsets = predictor(plain.flatten(1)).reshape(-1, 2, k, k)
        return deform_roi_align(feat, rois, offsets, k, scale, s, self.gamma, self.aligned)
