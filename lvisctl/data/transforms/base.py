"""What every training transform shares: the sample layout, seeded randomness and box/mask bookkeeping.

A *sample* is a dict (before it becomes the ``(image, target)`` pair of ARCHITECTURE.md):

- ``image``: ``tv_tensors.Image`` uint8 [3,H,W] (transforms work on uint8; the dataset converts to float)
- ``masks``: ``tv_tensors.Mask`` uint8 [N,H,W]; ``boxes``: ``tv_tensors.BoundingBoxes`` XYXY [N,4]
- ``labels`` int64 [N] (contiguous), ``neg_labels`` / ``not_exhaustive_labels`` int64 [*]
- ``ignore_boxes``: ``tv_tensors.BoundingBoxes`` XYXY [M,4]; ``image_id`` int; ``loss_weight`` float

A transform is called as ``t(sample, rng, source)``: ``rng`` is a ``torch.Generator`` seeded from
``(seed, epoch, position)`` (never global RNG state: exact resume), ``source`` loads other samples by index
(only Mosaic needs it).

Box convention: a tight box is the pixel-edge box of the mask, ``[min_x, min_y, max_x + 1, max_y + 1]``,
so a mask covering columns 10..19 has ``x1 = 10, x2 = 20`` (as LVIS boxes do), and a horizontal flip maps
tight boxes to tight boxes exactly.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torchvision import tv_tensors

Sample = dict[str, Any]

# Gray border for rotation and mosaic padding (YOLO's 114): close to the ImageNet mean, so about zero
# after the model's normalisation.
FILL_VALUE = 114


class SampleSource(Protocol):
    """Anything that loads un-augmented samples by index (the dataset)."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Sample: ...


class Transform(Protocol):
    def __call__(
        self, sample: Sample, rng: torch.Generator, source: SampleSource | None = None
    ) -> Sample: ...


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """A torch generator determined by ``(seed, epoch, position)`` alone (mixed by numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def uniform(rng: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return float(low + (high - low) * torch.rand(1, generator=rng).item())


def randint(rng: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (both ends included)."""
    return int(torch.randint(int(low), int(high) + 1, (1,), generator=rng).item())


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Pixel-edge tight boxes ``[N,4]`` (float32 XYXY) of ``[N,H,W]`` masks; zeros for empty masks."""
    return boxes_and_nonempty(masks)[0]


def boxes_and_nonempty(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes and a bool ``[N]`` "mask is not empty", from one pass over the masks."""
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32), torch.zeros(0, dtype=torch.bool)
    h, w = masks.shape[-2:]
    # Row/column occupancy via amax (faster than any() on uint8); argmax then finds the first occupied
    # index (torch returns the first maximum) from each end, without Python loops.
    cols = masks.amax(dim=1)  # [N,W]
    rows = masks.amax(dim=2)  # [N,H]
    x1 = cols.argmax(dim=1)
    x2 = w - cols.flip(1).argmax(dim=1)
    y1 = rows.argmax(dim=1)
    y2 = h - rows.flip(1).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)
    nonempty = cols.amax(dim=1) > 0
    boxes[~nonempty] = 0
    return boxes, nonempty


def make_boxes(data: torch.Tensor, height: int, width: int) -> tv_tensors.BoundingBoxes:
    return tv_tensors.BoundingBoxes(
        data.reshape(-1, 4).to(torch.float32), format="XYXY", canvas_size=(int(height), int(width))
    )


def finish_geometry(
    sample: Sample,
    image: torch.Tensor,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    ignore_boxes: torch.Tensor,
    *,
    box_from_mask: bool,
) -> Sample:
    """Store a geometric transform's outputs: drop vanished instances, recompute or clamp the boxes.

    Instances whose mask became empty are dropped. With ``box_from_mask`` the boxes are the tight boxes of
    the transformed masks ("rotated bounding box aligned with rotated mask"); otherwise the transformed
    boxes are kept, clamped to the image, and instances whose box collapsed are dropped too. Ignore boxes
    have no masks: they are always transformed as boxes and dropped when they collapse.
    """
    h, w = image.shape[-2:]
    mask_boxes, keep = boxes_and_nonempty(masks)
    if box_from_mask:
        new_boxes = mask_boxes
    else:
        new_boxes = _clamp(boxes.as_subclass(torch.Tensor), h, w)
        keep &= _nondegenerate(new_boxes)
    ign = _clamp(ignore_boxes.as_subclass(torch.Tensor), h, w)
    out = dict(sample)
    out["image"] = tv_tensors.Image(image)
    if not bool(keep.all()):  # indexing copies every mask: only when something is dropped
        masks, new_boxes, out["labels"] = masks[keep], new_boxes[keep], sample["labels"][keep]
    out["masks"] = tv_tensors.Mask(masks)
    out["boxes"] = make_boxes(new_boxes, h, w)
    out["ignore_boxes"] = make_boxes(ign[_nondegenerate(ign)], h, w)
    return out


def _clamp(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    boxes = boxes.reshape(-1, 4).to(torch.float32).clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


def _nondegenerate(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def image_size(sample: Sample) -> tuple[int, int]:
    """``(height, width)`` of the sample's image."""
    h, w = sample["image"].shape[-2:]
    return int(h), int(w)
