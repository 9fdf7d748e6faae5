"""Training augmentations: tight boxes after every geometric transform, Mosaic layout and sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lvisctl.config import load_config
from lvisctl.data.transforms import (
    Mosaic,
    RandomRotate,
    ScaleJitter,
    build_train_transforms,
    hflip_sample,
    mosaic_samples,
    resize_sample,
    rotate_sample,
    sample_generator,
    short_side_size,
    tight_boxes,
)
from lvisctl.data.transforms.base import make_boxes
from tests.helpers.data import make_sample


def test_tight_boxes_hand_computed():
    masks = torch.zeros((2, 10, 12), dtype=torch.uint8)
    masks[0, 2:5, 3:8] = 1  # rows 2..4, cols 3..7 -> pixel-edge box [3, 2, 8, 5]
    boxes = tight_boxes(masks)
    assert boxes.tolist() == [[3.0, 2.0, 8.0, 5.0], [0.0, 0.0, 0.0, 0.0]]
    assert tight_boxes(torch.zeros((0, 4, 4), dtype=torch.uint8)).shape == (0, 4)


def assert_tight(sample):
    expected = tight_boxes(sample["masks"].as_subclass(torch.Tensor))
    assert torch.equal(sample["boxes"].as_subclass(torch.Tensor), expected)
    assert sample["masks"].shape[0] == sample["boxes"].shape[0] == sample["labels"].shape[0]
    assert sample["masks"].shape[-2:] == sample["image"].shape[-2:]
    if len(sample["masks"]):
        assert sample["masks"].flatten(1).any(1).all(), "empty masks must be dropped"


# -- rotation ---------------------------------------------------------------------------------------------


def test_rotate_90_moves_box_exactly():
    # 64x64, rectangle cols 16..47, rows 24..39 (box [16,24,48,40]); 90 deg about the centre swaps its
    # extent: cols 24..39, rows 16..47 -> [24,16,40,48].
    s = make_sample(64, 64, [("rect", 16, 24, 48, 40)])
    out = rotate_sample(s, 90.0, box_from_mask=True)
    assert out["boxes"].tolist() == [[24.0, 16.0, 40.0, 48.0]]
    assert_tight(out)
    naive = rotate_sample(s, 90.0, box_from_mask=False)
    assert naive["boxes"].tolist() == [[24.0, 16.0, 40.0, 48.0]]


def test_rotate_45_aligned_box_stays_tight_naive_box_grows():
    # A disk of radius 10 at the centre: its box [22,22,42,42] has half-diagonal 10*sqrt(2), so the naive
    # rule gives 32 -/+ 14.142 = [17.858, 46.142]; the mask-aligned box stays about 20 px wide.
    s = make_sample(64, 64, [("disk", 32, 32, 10)])
    assert s["boxes"].tolist() == [[22.0, 22.0, 43.0, 43.0]]  # pixels 22..42 inclusive
    s["boxes"] = make_boxes(torch.tensor([[22.0, 22.0, 42.0, 42.0]]), 64, 64)
    naive = rotate_sample(s, 45.0, box_from_mask=False)
    lo, hi = 32 - 10 * math.sqrt(2), 32 + 10 * math.sqrt(2)
    assert torch.allclose(
        naive["boxes"].as_subclass(torch.Tensor), torch.tensor([[lo, lo, hi, hi]]), atol=1e-3
    )
    aligned = rotate_sample(s, 45.0, box_from_mask=True)
    assert_tight(aligned)
    width = float(aligned["boxes"][0, 2] - aligned["boxes"][0, 0])
    assert 19.0 <= width <= 23.0


def test_rotation_drops_instances_whose_mask_leaves_the_image():
    # A 3x3 corner instance rotated by 45 deg about the centre (no expand) lands outside the canvas.
    s = make_sample(64, 64, [("rect", 0, 0, 3, 3), ("rect", 24, 24, 40, 40)])
    out = rotate_sample(s, 45.0, box_from_mask=True)
    assert out["labels"].tolist() == [2]
    assert_tight(out)


def test_random_rotate_keeps_boxes_tight_and_is_seeded():
    s = make_sample(48, 64, [("rect", 5, 5, 30, 20), ("disk", 40, 30, 7), ("rect", 50, 2, 60, 45)])
    t = RandomRotate(1.0, 30.0, box_from_mask=True)
    a = t(s, sample_generator(0, 0, 5))
    b = t(s, sample_generator(0, 0, 5))
    c = t(s, sample_generator(0, 0, 6))
    assert_tight(a)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    assert not torch.equal(a["image"], c["image"])


# -- scale jitter -----------------------------------------------------------------------------------------


def test_short_side_size_hand_computed():
    assert short_side_size(48, 64, 96, 1000) == (96, 128)
    assert short_side_size(48, 64, 96, 100) == (75, 100)  # capped: 100/64 = 1.5625, 48*1.5625 = 75
    assert short_side_size(480, 640, 800, 1333) == (800, 1067)  # 640*800/480 = 1066.67 -> 1067


def test_resize_scales_masks_and_boxes():
    s = make_sample(48, 64, [("rect", 10, 8, 20, 16)])
    out = resize_sample(s, (96, 128), box_from_mask=True)
    assert out["image"].shape == (3, 96, 128)
    assert out["boxes"].tolist() == [[20.0, 16.0, 40.0, 32.0]]
    assert_tight(out)
    naive = resize_sample(s, (96, 128), box_from_mask=False)
    assert naive["boxes"].tolist() == [[20.0, 16.0, 40.0, 32.0]]


def test_scale_jitter_list_and_range():
    s = make_sample(48, 64, [("rect", 10, 8, 30, 40)])
    jitter = ScaleJitter(1000, scales=[24, 96])
    shorts = {jitter(s, sample_generator(1, 0, p))["image"].shape[1] for p in range(20)}
    assert shorts == {24, 96}
    ranged = ScaleJitter(1000, scale_range=[30, 33])
    picks = {ranged.pick_short_side(sample_generator(1, 0, p)) for p in range(60)}
    assert picks == {30, 31, 32, 33}
    out = ScaleJitter(1000, scales=[72])(s, sample_generator(0, 0, 0))
    assert out["image"].shape == (3, 72, 96)
    assert_tight(out)


def test_downscale_drops_instances_that_vanish():
    s = make_sample(64, 64, [("rect", 1, 1, 2, 2), ("rect", 10, 10, 40, 40)])  # a 1-pixel instance
    out = resize_sample(s, (8, 8), box_from_mask=True)
    assert out["labels"].tolist() == [2]
    assert_tight(out)


# -- flip -------------------------------------------------------------------------------------------------


def test_hflip_hand_computed():
    s = make_sample(48, 64, [("rect", 10, 8, 20, 16)])
    s["ignore_boxes"] = make_boxes(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), 48, 64)
    out = hflip_sample(s, box_from_mask=True)
    assert out["boxes"].tolist() == [[44.0, 8.0, 54.0, 16.0]]  # x' = 64 - x
    assert out["ignore_boxes"].tolist() == [[59.0, 0.0, 64.0, 5.0]]
    assert_tight(out)


# -- mosaic -----------------------------------------------------------------------------------------------


class CountingSource:
    """Returns a fresh 32x32 sample per load, labelled by call number (so we can tell the parts apart)."""

    def __init__(self, n: int = 10):
        self.n = n
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.n

    def load(self, index: int):
        self.loaded.append(index)
        k = len(self.loaded) + 1
        return make_sample(
            32, 32, [("rect", 2, 2, 30, 30)], labels=[k], neg=[20 + k], not_exhaustive=[40 + k]
        )


def test_mosaic_layout_hand_computed():
    # Four 32x32 parts around the centre of a 64 canvas: scale 1, part k at its quadrant.
    parts = [
        make_sample(32, 32, [("rect", 0, 0, 32, 32)], labels=[1], neg=[5, 6]),
        make_sample(32, 32, [("rect", 4, 6, 12, 10)], labels=[5], not_exhaustive=[7]),
        make_sample(32, 32, [("rect", 0, 0, 8, 8)], labels=[3]),
        make_sample(32, 32, [("rect", 30, 30, 32, 32)], labels=[4], not_exhaustive=[6]),
    ]
    parts[1]["ignore_boxes"] = make_boxes(torch.tensor([[1.0, 1.0, 3.0, 3.0]]), 32, 32)
    out = mosaic_samples(parts, (32, 32), 64, box_from_mask=True)
    assert out["image"].shape == (3, 64, 64)
    assert out["labels"].tolist() == [1, 5, 3, 4]
    assert out["boxes"].tolist() == [
        [0.0, 0.0, 32.0, 32.0],  # top-left part ends at the centre
        [36.0, 6.0, 44.0, 10.0],  # top-right part starts at x = 32
        [0.0, 32.0, 8.0, 40.0],  # bottom-left starts at y = 32
        [62.0, 62.0, 64.0, 64.0],  # bottom-right starts at (32, 32)
    ]
    assert out["ignore_boxes"].tolist() == [[33.0, 1.0, 35.0, 3.0]]
    assert_tight(out)
    # Union of negatives minus every class present or not exhaustive: {5, 6} - {1, 5, 3, 4, 7, 6}.
    assert out["neg_labels"].tolist() == []
    assert out["not_exhaustive_labels"].tolist() == [6, 7]


def test_mosaic_off_centre_crops_and_drops():
    # Centre (16, 16): the top-left part is cut to its bottom-right 16x16 corner; an instance in its
    # top-left corner disappears, one at its bottom-right survives cropped.
    parts = [make_sample(32, 32, [("rect", 0, 0, 8, 8), ("rect", 20, 20, 32, 32)], labels=[1, 2])] + [
        make_sample(32, 32, [("rect", 0, 0, 32, 32)], labels=[k]) for k in (3, 4, 5)
    ]
    out = mosaic_samples(parts, (16, 16), 64, box_from_mask=True)
    assert out["labels"].tolist() == [2, 3, 4, 5]
    assert out["boxes"][0].tolist() == [4.0, 4.0, 16.0, 16.0]  # (20-16, 20-16) to the centre
    assert_tight(out)
    naive = mosaic_samples(parts, (16, 16), 64, box_from_mask=False)
    assert naive["boxes"][0].tolist() == [4.0, 4.0, 16.0, 16.0]


def test_mosaic_has_instances_from_four_images_and_resizes_parts():
    src = CountingSource()
    base = make_sample(48, 64, [("rect", 4, 4, 60, 44)], labels=[1], neg=[9])
    out = Mosaic(1.0, 96)(base, sample_generator(0, 0, 0), src)
    assert out["image"].shape == (3, 96, 96)
    assert len(src.loaded) == 3
    assert sorted(set(out["labels"].tolist())) == [1, 2, 3, 4]
    assert out["neg_labels"].tolist() == [9, 22, 23, 24]
    assert out["not_exhaustive_labels"].tolist() == [42, 43, 44]
    assert_tight(out)


@pytest.mark.parametrize(
    ("weights", "expected"), [([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4]), (None, [0.25] * 4)]
)
def test_mosaic_partner_sampling_follows_weights(weights, expected):
    # 3000 draws of 3 partners with a fixed seed; a frequency's standard error is <= 0.0065 here, so a
    # 0.025 band is ~4 sigma, and the chi-square statistic must stay below the 0.1% point (16.27, 3 dof).
    mosaic = Mosaic(1.0, 64, weights=weights)
    rng = torch.Generator().manual_seed(1234)
    counts = np.zeros(4)
    for _ in range(3000):
        for i in mosaic.choose_partners(rng, 4):
            counts[i] += 1
    freq = counts / counts.sum()
    assert np.allclose(freq, expected, atol=0.025), freq
    chi2 = float(
        (((counts - counts.sum() * np.array(expected)) ** 2) / (counts.sum() * np.array(expected))).sum()
    )
    assert chi2 < 16.27


def test_mosaic_weight_count_must_match():
    with pytest.raises(ValueError, match="weights"):
        Mosaic(1.0, 64, weights=[1.0, 2.0]).choose_partners(torch.Generator(), 5)


# -- the configured pipeline --------------------------------------------------------------------------------


def small_cfg(**over):
    overrides = [
        "augment.train_scales=[40, 56]",
        "augment.max_size=100",
        "augment.mosaic.prob=1.0",
        "augment.mosaic.size=64",
        "augment.rotate.prob=1.0",
        "augment.rotate.max_angle=30.0",
        "augment.hflip_prob=0.5",
    ] + [f"{k}={v}" for k, v in over.items()]
    return load_config(None, overrides)


def test_pipeline_boxes_tight_after_everything():
    t = build_train_transforms(small_cfg(), repeat_factors=np.array([1.0, 2.0, 1.0, 1.0]))
    assert [type(x).__name__ for x in t.transforms] == [
        "Mosaic",
        "RandomRotate",
        "ScaleJitter",
        "RandomHorizontalFlip",
    ]
    for p in range(6):
        base = make_sample(48, 64, [("rect", 4, 4, 40, 30), ("disk", 45, 30, 9)], labels=[1, 2])
        out = t(base, sample_generator(3, 1, p), CountingSource(4))
        assert min(out["image"].shape[-2:]) in (40, 56)
        assert_tight(out)


def test_pipeline_multiscale_and_switches():
    cfg = small_cfg(**{"augment.multi_scale": "true", "augment.multi_scale_range": "[30, 34]"})
    cfg = cfg.replace({"augment.mosaic.rfs_weighted": False})
    t = build_train_transforms(cfg, repeat_factors=np.ones(4))
    assert t.transforms[0].weights is None
    assert t.transforms[2].scale_range == (30, 34)
    base = make_sample(48, 64, [("rect", 4, 4, 40, 30)])
    out = t(base, sample_generator(0, 0, 0), CountingSource(4))
    assert 30 <= min(out["image"].shape[-2:]) <= 34
    none = build_train_transforms(small_cfg(**{"augment.mosaic.prob": 0.0, "augment.rotate.prob": 0.0}))
    assert [type(x).__name__ for x in none.transforms] == ["ScaleJitter", "RandomHorizontalFlip"]


def test_naive_pipeline_rotates_box_corners():
    cfg = small_cfg(
        **{"augment.box_from_mask": "false", "augment.mosaic.prob": 0.0, "augment.hflip_prob": 0.0}
    )
    t = build_train_transforms(cfg)
    s = make_sample(64, 64, [("disk", 32, 32, 10)])
    s["boxes"] = make_boxes(torch.tensor([[22.0, 22.0, 42.0, 42.0]]), 64, 64)
    widths = []
    for p in range(8):
        out = t(s, sample_generator(0, 0, p))
        b = out["boxes"][0]
        widths.append(float(b[2] - b[0]) / out["image"].shape[-1])
    # Corner rotation inflates the box relative to the fixed disk: never narrower than the unrotated one.
    assert min(widths) >= 20 / 64 * 0.95 and max(widths) > 20 / 64 * 1.1


@pytest.mark.parametrize("expand", [False, True])
def test_per_instance_mask_rotation_matches_torchvision(expand):
    # rotate_masks visits only each instance's window; it must agree with F.rotate on whole masks
    # (up to nearest-neighbour ties: float32 in torchvision vs float64 here).
    from torchvision.transforms.v2 import functional as F

    from lvisctl.data.transforms.rotate import rotate_masks

    s = make_sample(48, 64, [("rect", 3, 5, 20, 30), ("disk", 40, 20, 9), ("rect", 50, 30, 64, 48)])
    masks = s["masks"].as_subclass(torch.Tensor)
    for angle in (7.0, -33.3, 45.0, 137.0):
        ref = F.rotate(s["masks"], angle, expand=expand).as_subclass(torch.Tensor)
        out = rotate_masks(masks, angle, *ref.shape[-2:])
        assert out.shape == ref.shape
        assert (out != ref).sum() <= 2, angle
