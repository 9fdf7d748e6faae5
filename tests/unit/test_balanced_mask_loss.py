"""Balanced mask loss (Eq. 2-5) against hand-computed values."""

import math

import pytest
import torch

from lvisctl.losses.balanced_mask import balanced_mask_loss, foreground_weight

LN2 = math.log(2.0)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_one_fg_pixel_in_2x2_uses_target_fraction_as_area_ratio():
    logits = torch.zeros(1, 2, 2)
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # p = 0.5 everywhere; ratio = 1/4 -> w_fg = max(1, 0.5 / 0.25) = 2
    dice = 1 - (2 * 0.5 + 1) / (4 * 0.25 + 1 + 1)  # = 1/3
    wbce = (2 * LN2 + 3 * LN2) / 4
    assert balanced_mask_loss(logits, targets).item() == pytest.approx(dice + wbce, rel=1e-6)
    # lam scales only the WBCE term
    assert balanced_mask_loss(logits, targets, lam=0.5).item() == pytest.approx(dice + 0.5 * wbce, rel=1e-6)


def test_explicit_area_ratio_sets_foreground_weight():
    logits = torch.zeros(1, 2, 2)
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # S_mask / S_bbox = 0.1 -> w_fg = 5
    expected = 1 / 3 + (5 * LN2 + 3 * LN2) / 4
    got = balanced_mask_loss(logits, targets, area_ratio=torch.tensor([0.1]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_foreground_weight_rule():
    ratios = torch.tensor([1e-3, 0.1, 0.5, 0.9, 10.0])
    assert foreground_weight(ratios).tolist() == pytest.approx([500.0, 5.0, 1.0, 1.0, 1.0], rel=1e-6)


def test_empty_mask_is_finite_and_matches_hand_value():
    logits = torch.full((1, 2, 2), -2.0)
    targets = torch.zeros(1, 2, 2)
    p = _sig(-2.0)
    dice = 1 - 1 / (4 * p * p + 1)
    wbce = _softplus(-2.0)  # -log(1 - p) for y = 0, weight 1
    got = balanced_mask_loss(logits, targets)  # area ratio 0 here
    assert got.item() == pytest.approx(dice + wbce, rel=1e-6)
    explicit_zero = balanced_mask_loss(logits, targets, area_ratio=torch.zeros(1))
    assert explicit_zero.item() == pytest.approx(dice + wbce, rel=1e-6)


def test_full_mask_matches_hand_value():
    logits = torch.full((1, 2, 2), 3.0)
    targets = torch.ones(1, 2, 2)
    p = _sig(3.0)
    dice = 1 - (2 * 4 * p + 1) / (4 * p * p + 4 + 1)
    wbce = _softplus(-3.0)  # -log p, weight max(1, 0.5 / 1) = 1
    assert balanced_mask_loss(logits, targets).item() == pytest.approx(dice + wbce, rel=1e-6)


def test_tiny_and_huge_area_ratios():
    logits = torch.zeros(2, 2, 2)
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]] * 2)
    ratios = torch.tensor([1e-3, 10.0])  # w_fg = 500 and 1
    per_roi = [1 / 3 + (500 * LN2 + 3 * LN2) / 4, 1 / 3 + (1 * LN2 + 3 * LN2) / 4]
    got = balanced_mask_loss(logits, targets, area_ratio=ratios)
    assert got.item() == pytest.approx(sum(per_roi) / 2, rel=1e-6)


def test_mean_over_rois():
    logits = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 3.0)])
    targets = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.ones(2, 2)])
    first = 1 / 3 + 5 / 4 * LN2
    p = _sig(3.0)
    second = 1 - (8 * p + 1) / (4 * p * p + 5) + _softplus(-3.0)
    assert balanced_mask_loss(logits, targets).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_extreme_logits_are_stable():
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    wrong = torch.tensor([[[-100.0, 100.0], [100.0, 100.0]]], requires_grad=True)
    loss = balanced_mask_loss(wrong, targets)
    # p^2 rounds to 1 on the three background pixels: Dice = 1 - 1 / (3 + 1 + 1); BCE = 100 per pixel
    expected = (1 - 1 / 5) + (2 * 100 + 3 * 100) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(wrong.grad).all()


def test_no_nan_gradient_at_ratio_zero():
    logits = torch.randn(3, 4, 4, requires_grad=True)
    targets = torch.zeros(3, 4, 4)
    loss = balanced_mask_loss(logits, targets, area_ratio=torch.zeros(3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_zero_rois_gives_connected_zero():
    logits = torch.zeros(0, 28, 28, requires_grad=True)
    loss = balanced_mask_loss(logits, torch.zeros(0, 28, 28))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 28, 28)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        balanced_mask_loss(torch.zeros(1, 2, 2), torch.zeros(1, 3, 3))
