"""Mosaic (Bochkovskiy et al. 2020, YOLOv4): four images tiled around a random centre on one canvas.

lvisTraveler's trick "make sampling probability in mosaic align with RFS": the three extra images are
drawn with probability proportional to their RFS repeat factor (``weights``), so rare classes are as
over-sampled inside mosaics as in the main sample stream; ``weights=None`` draws them uniformly.

Layout: a square canvas of side ``size``; the centre ``(cx, cy)`` is uniform in ``[size/4, 3 size/4]``;
each image is resized so its long side is ``size / 2`` and placed with one corner at the centre (top-left
image ends at the centre, top-right starts there, ...); what falls outside the canvas is cut off.

Federated fields: positive labels are concatenated; ``not_exhaustive_labels`` is the union; ``neg_labels``
is the union minus every class annotated or marked not-exhaustive anywhere in the mosaic (a class cannot
be both present and verified absent in one training image). ``image_id`` and ``loss_weight`` are the
first (base) image's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lvisctl.data.transforms.base import (
    FILL_VALUE,
    Sample,
    SampleSource,
    finish_geometry,
    image_size,
    make_boxes,
    randint,
    uniform,
)
from lvisctl.data.transforms.scale_jitter import resize_sample


class Mosaic:
    """With probability ``prob``, replace the sample by a mosaic of it and 3 images drawn from ``source``."""

    def __init__(
        self,
        prob: float,
        size: int,
        *,
        weights: Sequence[float] | np.ndarray | None = None,
        box_from_mask: bool = True,
    ):
        if size < 4:
            raise ValueError(f"mosaic size must be >= 4 pixels, got {size}")
        self.prob = float(prob)
        self.size = int(size)
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        self.box_from_mask = box_from_mask

    def choose_partners(self, rng: torch.Generator, num_images: int, k: int = 3) -> list[int]:
        """``k`` image indices drawn with replacement, proportional to ``weights`` (uniform without)."""
        if self.weights is None:
            weights = torch.ones(num_images, dtype=torch.float64)
        else:
            if len(self.weights) != num_images:
                raise ValueError(f"mosaic has {len(self.weights)} weights for {num_images} images")
            weights = self.weights
        return [int(i) for i in torch.multinomial(weights, k, replacement=True, generator=rng)]

    def __call__(self, sample: Sample, rng: torch.Generator, source: SampleSource | None = None) -> Sample:
        if uniform(rng) >= self.prob:
            return sample
        if source is None:
            raise ValueError("Mosaic needs a sample source to load its extra images")
        quarter = self.size // 4
        center = (randint(rng, quarter, self.size - quarter), randint(rng, quarter, self.size - quarter))
        parts = [sample] + [source.load(i) for i in self.choose_partners(rng, len(source))]
        return mosaic_samples(parts, center, self.size, box_from_mask=self.box_from_mask)


def mosaic_samples(
    parts: Sequence[Sample], center: tuple[int, int], size: int, *, box_from_mask: bool = True
) -> Sample:
    """Tile 4 samples (top-left, top-right, bottom-left, bottom-right) around ``center = (cx, cy)``."""
    if len(parts) != 4:
        raise ValueError(f"mosaic needs 4 samples, got {len(parts)}")
    cx, cy = center
    parts = [_fit(part, size / 2, box_from_mask) for part in parts]
    canvas = torch.full((3, size, size), FILL_VALUE, dtype=torch.uint8)
    windows, visible = [], []
    for k, part in enumerate(parts):
        nh, nw = image_size(part)
        x0 = cx - nw if k in (0, 2) else cx
        y0 = cy - nh if k in (0, 1) else cy
        # Visible window in the part's own coordinates.
        left, top = max(0, -x0), max(0, -y0)
        right, bottom = min(nw, size - x0), min(nh, size - y0)
        windows.append((left, top, right, bottom, x0, y0))
        part_masks = part["masks"].as_subclass(torch.Tensor)[:, top:bottom, left:right]
        # Instances cut off entirely are skipped before pasting (saves copying every mask afterwards).
        visible.append(part_masks.amax(dim=(1, 2)) > 0 if part_masks.numel() else part["labels"] < 0)
    # One allocation for all pasted instances (masks dominate the cost of a mosaic).
    masks = torch.zeros((int(sum(v.sum() for v in visible)), size, size), dtype=torch.uint8)
    boxes, labels, ignores = [], [], []
    first = 0
    for part, (left, top, right, bottom, x0, y0), keep in zip(parts, windows, visible, strict=True):
        canvas[:, y0 + top : y0 + bottom, x0 + left : x0 + right] = part["image"][:, top:bottom, left:right]
        n = int(keep.sum())
        part_masks = part["masks"].as_subclass(torch.Tensor)
        part_masks = part_masks if bool(keep.all()) else part_masks[keep]
        masks[first : first + n, y0 + top : y0 + bottom, x0 + left : x0 + right] = part_masks[
            :, top:bottom, left:right
        ]
        first += n
        boxes.append(_window(part["boxes"][keep], left, top, right, bottom, x0, y0))
        ignores.append(_window(part["ignore_boxes"], left, top, right, bottom, x0, y0))
        labels.append(part["labels"][keep])
    merged = dict(parts[0])
    merged["labels"] = torch.cat(labels)
    # Classes of cut-off instances count as present too: they are in the source images.
    merged.update(_merge_federated(parts, torch.cat([p["labels"] for p in parts])))
    return finish_geometry(
        merged,
        canvas,
        masks,
        make_boxes(torch.cat(boxes), size, size),
        make_boxes(torch.cat(ignores), size, size),
        box_from_mask=box_from_mask,
    )


def _fit(part: Sample, long_side: float, box_from_mask: bool) -> Sample:
    """Resize so the long side is ``long_side`` (a mosaic cell), keeping the aspect ratio."""
    h, w = image_size(part)
    scale = long_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return part if size == (h, w) else resize_sample(part, size, box_from_mask=box_from_mask)


def _window(
    boxes: torch.Tensor, left: int, top: int, right: int, bottom: int, x0: int, y0: int
) -> torch.Tensor:
    """Clip boxes to the visible window and move them to canvas coordinates."""
    b = boxes.as_subclass(torch.Tensor).reshape(-1, 4).to(torch.float32).clone()
    b[:, 0::2] = b[:, 0::2].clamp(left, right) + x0
    b[:, 1::2] = b[:, 1::2].clamp(top, bottom) + y0
    return b


def _merge_federated(parts: Sequence[Sample], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    not_exhaustive = set().union(*(p["not_exhaustive_labels"].tolist() for p in parts))
    present = set(labels.tolist()) | not_exhaustive
    neg = set().union(*(p["neg_labels"].tolist() for p in parts)) - present
    return {
        "neg_labels": torch.tensor(sorted(neg), dtype=torch.int64),
        "not_exhaustive_labels": torch.tensor(sorted(not_exhaustive), dtype=torch.int64),
    }
