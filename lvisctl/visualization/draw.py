"""Drawing instances on images with torchvision's ``draw_segmentation_masks`` / ``draw_bounding_boxes``.

Images are ``uint8 [3, H, W]`` tensors. Colours are stable per category id (the same category has the
same colour in every image, in ground truth and predictions, in every run): hues spaced by the golden
ratio, so neighbouring ids get distant colours.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

GOLDEN = 0.618033988749895
MASK_ALPHA = 0.45
TITLE_HEIGHT = 16
GAP = 4  # pixels between panels and tiles
BACKGROUND = (32, 32, 32)


def category_color(category_id: int) -> tuple[int, int, int]:
    """A saturated RGB colour, a function of the category id only."""
    hue = (int(category_id) * GOLDEN) % 1.0
    sat = 0.75 if int(category_id) % 2 else 0.55
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


@dataclass
class Instances:
    """What to draw on one image: ``masks`` bool ``[N, H, W]`` (or None), ``boxes`` xyxy ``[N, 4]``,
    ``category_ids`` and ``texts`` (``"name 0.87"``) per instance."""

    boxes: Tensor
    category_ids: list[int]
    texts: list[str]
    masks: Tensor | None = None

    def __len__(self) -> int:
        return len(self.category_ids)


def draw_instances(image: Tensor, instances: Instances, *, line_width: int = 2) -> Tensor:
    """``image`` with the instances' masks (translucent), boxes and texts drawn, in category colours."""
    if not len(instances):
        return image.clone()
    colors = [category_color(c) for c in instances.category_ids]
    out = image
    if instances.masks is not None and instances.masks.numel():
        from torchvision.utils import draw_segmentation_masks

        out = draw_segmentation_masks(out, instances.masks.bool(), alpha=MASK_ALPHA, colors=colors)
    from torchvision.utils import draw_bounding_boxes

    return draw_bounding_boxes(
        out,
        instances.boxes.float(),
        labels=instances.texts,
        colors=colors,
        width=line_width,
        label_colors=[(0, 0, 0)] * len(instances),
        label_background_colors=colors,
        fill_labels=True,
    )


def enlarge(image: Tensor, instances: Instances, factor: int) -> tuple[Tensor, Instances]:
    """``image`` and ``instances`` scaled up by an integer ``factor`` (nearest), so that texts drawn on a
    small image stay legible."""
    if factor <= 1:
        return image, instances
    big = image.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    masks = instances.masks
    if masks is not None:
        masks = masks.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    return big, Instances(instances.boxes * factor, instances.category_ids, instances.texts, masks)


def titled(image: Tensor, title: str) -> Tensor:
    """``image`` under a dark strip holding ``title``."""
    from PIL import Image, ImageDraw

    _, h, w = image.shape
    strip = Image.new("RGB", (w, TITLE_HEIGHT), BACKGROUND)
    ImageDraw.Draw(strip).text((3, 2), title, fill=(235, 235, 235))
    head = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
    return torch.cat([head, image], dim=1)


def side_by_side(panels: Sequence[Tensor]) -> Tensor:
    """Panels left to right, top-aligned, on a dark background."""
    height = max(p.shape[1] for p in panels)
    width = sum(p.shape[2] for p in panels) + GAP * (len(panels) - 1)
    canvas = _canvas(height, width)
    x = 0
    for panel in panels:
        canvas[:, : panel.shape[1], x : x + panel.shape[2]] = panel
        x += panel.shape[2] + GAP
    return canvas


def contact_sheet(tiles: Sequence[Tensor], *, columns: int = 4, tile_height: int = 160) -> Tensor:
    """Thumbnails (each resized to ``tile_height``, aspect kept) in rows of ``columns``."""
    from torchvision.transforms.functional import resize

    thumbs = [
        resize(t, [tile_height, max(1, round(t.shape[2] * tile_height / t.shape[1]))], antialias=True)
        for t in tiles
    ]
    rows = [thumbs[i : i + columns] for i in range(0, len(thumbs), columns)]
    row_images = [side_by_side(r) for r in rows]
    width = max(r.shape[2] for r in row_images)
    canvas = _canvas(len(rows) * (tile_height + GAP) - GAP, width)
    for k, row in enumerate(row_images):
        y = k * (tile_height + GAP)
        canvas[:, y : y + row.shape[1], : row.shape[2]] = row
    return canvas


def _canvas(height: int, width: int) -> Tensor:
    return torch.tensor(BACKGROUND, dtype=torch.uint8).view(3, 1, 1).expand(3, height, width).clone()
