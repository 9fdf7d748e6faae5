"""InstaBoost (augment.instaboost): masks and boxes stay consistent, never an image without instances."""

from __future__ import annotations

import pytest
import torch

from lvisctl.config import load_config
from lvisctl.data.transforms import build_train_transforms, sample_generator, tight_boxes
from lvisctl.data.transforms.instaboost import InstaBoost, fill_holes, paste_instances
from tests.unit.test_transforms import make_sample

SHAPES = [("rect", 10, 10, 40, 30), ("disk", 60, 50, 12), ("rect", 5, 55, 20, 75)]


def test_identity_moves_keep_instances_and_boxes():
    sample = make_sample(80, 90, SHAPES)
    out = paste_instances(sample, [(1.0, 0.0, 0.0, 0.0)] * 3, [0, 1, 2])
    assert torch.equal(out["masks"], sample["masks"])
    assert torch.equal(out["boxes"], sample["boxes"])
    # the instances' own pixels come back where they were
    inside = sample["masks"].amax(dim=0) > 0
    assert torch.equal(out["image"][:, inside], sample["image"][:, inside])


def test_a_shift_moves_mask_box_and_pixels_together():
    sample = make_sample(80, 90, SHAPES[:1])
    out = paste_instances(sample, [(1.0, 0.0, 5.0, -3.0)], [0])
    # rect cols 10..39, rows 10..29 -> shifted by (+5, -3)
    assert out["boxes"].tolist() == [[15.0, 7.0, 45.0, 27.0]]
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor), tight_boxes(out["masks"]))
    assert torch.equal(out["image"][:, 7:27, 15:45], sample["image"][:, 10:30, 10:40])
    # the uncovered part of the old place was filled from the background, not left as the old pixels
    assert not torch.equal(out["image"][:, 27:30, 10:15], sample["image"][:, 27:30, 10:15])


def test_later_instances_occlude_earlier_ones():
    sample = make_sample(60, 60, [("rect", 10, 10, 40, 40), ("rect", 20, 20, 30, 30)])
    out = paste_instances(sample, [(1.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0)], [0, 1])
    assert int(out["masks"][0].sum()) == 30 * 30 - 10 * 10  # the small square on top
    assert int(out["masks"][1].sum()) == 100
    assert int((out["masks"].sum(dim=0) > 1).sum()) == 0  # no pixel belongs to two instances


@pytest.mark.parametrize("seed", range(8))
def test_random_instaboost_keeps_masks_and_boxes_consistent(seed):
    sample = make_sample(80, 90, SHAPES)
    out = InstaBoost(prob=1.0, scale=(0.6, 1.4), max_angle=20.0)(sample, sample_generator(seed, 0, 0))
    n = out["masks"].shape[0]
    assert 1 <= n <= 3 and out["labels"].shape == (n,)
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor), tight_boxes(out["masks"]))
    assert bool((out["masks"].flatten(1).sum(dim=1) > 0).all())
    assert out["image"].shape == sample["image"].shape and out["image"].dtype == torch.uint8


def test_never_an_image_without_instances():
    sample = make_sample(40, 40, [("rect", 30, 30, 38, 38)])
    # moved far off the canvas: the instance vanishes, so the original sample comes back
    out = paste_instances(sample, [(1.0, 0.0, 100.0, 100.0)], [0])
    assert out["masks"].shape[0] == 0
    boost = InstaBoost(prob=1.0, shift=0.01)  # shifts up to 8 / 0.01 = 800 px
    for seed in range(5):
        kept = boost(sample, sample_generator(seed, 0, 0))
        assert kept["masks"].shape[0] == 1 and bool(kept["masks"].any())
    empty = make_sample(40, 40, [])
    assert boost(empty, sample_generator(0, 0, 0)) is empty


def test_same_seed_same_result_and_prob_zero_is_identity():
    sample = make_sample(80, 90, SHAPES)
    boost = InstaBoost(prob=1.0)
    a, b = boost(sample, sample_generator(3, 1, 7)), boost(sample, sample_generator(3, 1, 7))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    assert InstaBoost(prob=0.0)(sample, sample_generator(3, 1, 7)) is sample


def test_fill_holes_uses_the_surrounding_pixels():
    image = torch.zeros((3, 20, 20), dtype=torch.uint8)
    image[:, :, 10:] = 200
    hole = torch.zeros((20, 20), dtype=torch.bool)
    hole[5:8, 2:5] = True  # inside the black half
    hole[5:8, 15:18] = True  # inside the bright half
    filled = fill_holes(image, hole)
    assert int(filled[:, 5:8, 2:5].max()) == 0 and int(filled[:, 5:8, 15:18].min()) == 200
    assert torch.equal(filled[:, ~hole], image[:, ~hole])


def test_config_switch_puts_instaboost_first():
    cfg = load_config(None, ["augment.instaboost.prob=0.5"])
    names = [type(t).__name__ for t in build_train_transforms(cfg).transforms]
    assert names[0] == "InstaBoost"
    assert "InstaBoost" not in [
        type(t).__name__ for t in build_train_transforms(load_config(None)).transforms
    ]
