"""The fast mask post-processing gives the same RLE, byte for byte, as the obvious way."""

from __future__ import annotations

import pycocotools.mask as mask_utils
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from lvisctl.inference.postprocess import crop_counts, masks_to_rles, paste_masks


def obvious(probs, boxes, size, thresh=0.5):
    pasted = paste_masks_in_image(probs, boxes, size, padding=1)[:, 0] > thresh
    import numpy as np

    array = np.asfortranarray(pasted.to(torch.uint8).permute(1, 2, 0).numpy())
    return [{"size": [size[0], size[1]], "counts": r["counts"].decode()} for r in mask_utils.encode(array)]


def random_case(seed, n, size):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    # Boxes inside, at the border (the detector clips boxes to the image: torchvision's paste
    # mis-slices boxes that lie outside it), tiny and sub-pixel.
    x0 = torch.rand(n, generator=g) * (w + 40) - 30
    y0 = torch.rand(n, generator=g) * (h + 40) - 30
    bw = torch.rand(n, generator=g) ** 2 * w * 0.8
    bh = torch.rand(n, generator=g) ** 2 * h * 0.8
    boxes = torch.stack([x0, y0, x0 + bw, y0 + bh], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    boxes[0] = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0])  # fills the image: ends on a one run
    boxes[1] = torch.tensor([3.0, 4.0, 3.2, 4.1])  # sub-pixel
    boxes[2] = torch.tensor([w - 1.0, 5.0, w, 30.0])  # one column at the right border
    logits = torch.randn(n, 1, 28, 28, generator=g) * 3
    return torch.sigmoid(logits), boxes


@pytest.mark.parametrize("seed,size", [(0, (48, 64)), (1, (61, 37)), (2, (120, 90))])
def test_rles_identical_to_paste_threshold_encode(seed, size):
    probs, boxes = random_case(seed, 40, size)
    assert masks_to_rles(probs, boxes, size) == obvious(probs, boxes, size)


def test_all_foreground_and_all_background():
    size = (5, 4)
    probs = torch.ones(2, 1, 28, 28)
    probs[1] = 0.0
    boxes = torch.tensor([[-10.0, -10.0, 30.0, 30.0], [0.0, 0.0, 3.0, 4.0]])
    rles = masks_to_rles(probs, boxes, size)
    assert rles == obvious(probs, boxes, size)
    assert mask_utils.area([{**r, "counts": r["counts"].encode()} for r in rles]).tolist() == [20, 0]


def test_crop_counts_by_hand():
    import numpy as np

    # 3 x 4 image, crop of 2 x 2 ones at x 1..2, y 1..2: column-major counts 4 zeros, 2 ones, 1, 2, 3.
    counts = crop_counts(np.ones((2, 2), bool), np.array([1, 1, 3, 3]), (3, 4))
    assert counts.tolist() == [4, 2, 1, 2, 3]
    # Starts with a one: the zero run is empty.
    assert crop_counts(np.ones((1, 1), bool), np.array([0, 0, 1, 1]), (2, 2)).tolist() == [0, 1, 3]


def test_empty_input():
    assert masks_to_rles(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (10, 10)) == []


@pytest.mark.parametrize("seed,size", [(0, (48, 64)), (3, (61, 37))])
def test_paste_masks_equal_torchvision_paste_and_places_hold_the_pixels(seed, size):
    probs, boxes = random_case(seed, 30, size)
    masks, places = paste_masks(probs, boxes, size, 0.4)
    assert masks.dtype == torch.bool and masks.shape == (30, *size)
    assert torch.equal(masks, paste_masks_in_image(probs, boxes, size, padding=1)[:, 0] > 0.4)
    for m, (x0, y0, x1, y1) in zip(masks, places.tolist(), strict=True):
        inside = torch.zeros_like(m)
        inside[y0:y1, x0:x1] = True
        assert not (m & ~inside).any()  # every pixel lies inside its place
    empty, none = paste_masks(probs[:0], boxes[:0], size)
    assert empty.shape == (0, *size) and none.shape == (0, 4)
