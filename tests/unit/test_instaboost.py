"""InstaBoost (augment.instaboost): masks and boxes stay consistent, never an image without instances."""

from __future__ import annotations

import pytest
import torch

from lvisctl.config import load_config
from lvisctl.data.transforms import build_train_transforms, sample_generator, tight_boxes
from lvisctl.data.transforms.instaboost import InstaBoost, fill_holes, paste_instances
from tests.helpers.data import make_sample

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


# ------------------------------------------------ the package's rules (GothicAi/InstaBoost-pypi)
from lvisctl.data.transforms.instaboost import (  # noqa: E402
    draw_color_factors,
    instance_groups,
    jitter_colors,
)

# a rider on a horse (boxes overlap) and a ball apart, all away from the 10 px border of a 100 x 110 image
RIDER, HORSE, BALL = ("rect", 40, 20, 55, 55), ("rect", 25, 50, 75, 80), ("rect", 85, 60, 95, 70)


def test_overlapping_instances_form_one_group_and_move_together():
    sample = make_sample(100, 110, [RIDER, HORSE, BALL])
    assert instance_groups(sample["boxes"].as_subclass(torch.Tensor)) == [[0, 1], [2]]
    # one group's move shifts both of its instances' boxes by the same amount
    out = paste_instances(sample, [(1.0, 0.0, 3.0, -2.0), (1.0, 0.0, 0.0, 0.0)], [0, 1], [[0, 1], [2]])
    moved = (out["boxes"] - sample["boxes"]).as_subclass(torch.Tensor)
    assert moved[:2].tolist() == [[3.0, -2.0, 3.0, -2.0]] * 2 and moved[2].tolist() == [0.0] * 4
    boost = InstaBoost(prob=1.0, scale=(1.0, 1.0), max_angle=0.0, color_prob=0.0)  # shifts only
    apart = 0
    for seed in range(12):
        out = boost(sample, sample_generator(seed, 0, 0))
        shift = (out["boxes"] - sample["boxes"]).as_subclass(torch.Tensor)[:, :2]
        assert torch.equal(shift[0], shift[1])  # the rider stays on the horse
        apart += int(not torch.equal(shift[0], shift[2]))
    assert apart > 0  # the ball moves on its own


def test_shifts_are_integers_within_a_fifteenth_and_angles_whole_degrees():
    boost = InstaBoost(prob=1.0)
    box, size = [25.0, 20.0, 75.0, 80.0], (100, 110)  # 50 x 60: |dx| <= 3, |dy| <= 4
    moves = [boost.draw_move(sample_generator(s, 0, 0), box, size) for s in range(200)]
    assert {m[2] for m in moves} == {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
    assert {m[3] for m in moves} == {float(d) for d in range(-4, 5)}
    assert {m[1] for m in moves} == {-1.0, 0.0, 1.0}
    assert all(0.8 <= m[0] <= 1.2 for m in moves) and min(m[0] for m in moves) < 1


@pytest.mark.parametrize(
    "box, dx_sign, dy_sign",
    [
        ([2.0, 30.0, 40.0, 60.0], -1, 0),  # left border: shift left or not at all
        ([60.0, 30.0, 105.0, 60.0], 1, 0),  # right border (110 wide)
        ([30.0, 5.0, 60.0, 40.0], 0, -1),  # top
        ([30.0, 50.0, 60.0, 95.0], 0, 1),  # bottom (100 high)
    ],
)
def test_a_group_at_the_border_grows_moves_towards_it_and_does_not_rotate(box, dx_sign, dy_sign):
    boost = InstaBoost(prob=1.0)
    for seed in range(60):
        scale, angle, dx, dy = boost.draw_move(sample_generator(seed, 0, 0), box, (100, 110))
        assert scale >= 1.0 and angle == 0.0
        assert dx_sign == 0 or dx * dx_sign >= 0
        assert dy_sign == 0 or dy * dy_sign >= 0


def test_a_cut_off_object_keeps_its_cut_at_the_border():
    """Its cut edge (x = 0) never moves into the image: scale >= 1 about the centre, shift only left."""
    sample = make_sample(60, 80, [("rect", 0, 20, 30, 40)])
    boost = InstaBoost(prob=1.0, color_prob=0.0)
    for seed in range(20):
        out = boost(sample, sample_generator(seed, 0, 0))
        assert out["boxes"][0, 0].item() == 0.0 and bool(out["masks"][0, :, 0].any())


def test_color_jitter_is_randomcolor():
    factors = [draw_color_factors(sample_generator(s, 0, 0)) for s in range(300)]
    sat, bright, contrast, sharp = (sorted({f[i] for f in factors}) for i in range(4))
    assert sat[0] == 0.0 and sat[-1] == 3.0 and bright[0] == 1.0 and bright[-1] == 2.0
    assert contrast[0] == 1.0 and contrast[-1] == 2.0 and sharp[0] == 0.0 and sharp[-1] == 3.0
    assert all(round(v * 10) == v * 10 for v in sat + bright + contrast + sharp)  # steps of 0.1
    image = torch.randint(0, 200, (3, 20, 20), dtype=torch.uint8)
    assert torch.equal(jitter_colors(image, (1.0, 1.0, 1.0, 1.0)), image)
    gray = torch.full((3, 8, 8), 50, dtype=torch.uint8)
    assert torch.equal(jitter_colors(gray, (1.0, 2.0, 1.0, 1.0)), torch.full_like(gray, 100))
    # color_prob: the same instances, a jittered image
    sample = make_sample(80, 90, SHAPES)
    plain = InstaBoost(prob=1.0, color_prob=0.0)(sample, sample_generator(1, 0, 0))
    jittered = InstaBoost(prob=1.0, color_prob=1.0)(sample, sample_generator(1, 0, 0))
    assert torch.equal(plain["masks"], jittered["masks"]) and not torch.equal(
        plain["image"], jittered["image"]
    )
