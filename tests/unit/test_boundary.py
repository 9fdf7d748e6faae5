"""BMask R-CNN boundary targets, boundary loss and the boundary-preserving mask head."""

import math

import pytest
import torch

from lvisctl.losses.boundary import boundary_loss, boundary_targets, dice_loss
from lvisctl.modeling.boundary_head import BoundaryPreservingMaskHead


def _grid(rows):
    return torch.tensor([[int(c) for c in row] for row in rows], dtype=torch.float32)


def test_square_boundary_is_its_inner_ring():
    mask = _grid(
        [
            "00000000",
            "00000000",
            "00111100",
            "00111100",
            "00111100",
            "00111100",
            "00000000",
            "00000000",
        ]
    )
    expected = _grid(
        [
            "00000000",
            "00000000",
            "00111100",
            "00100100",
            "00100100",
            "00111100",
            "00000000",
            "00000000",
        ]
    )
    assert torch.equal(boundary_targets(mask[None])[0], expected)


def test_square_touching_the_roi_border_and_degenerate_masks():
    mask = _grid(["1110", "1110", "1110", "0000"])
    # zero padding makes mask pixels on the map border boundary; (1, 1) has all 8 neighbours in the mask,
    # so it is the only foreground pixel that is not boundary
    expected = _grid(["1110", "1010", "1110", "0000"])
    assert torch.equal(boundary_targets(mask[None])[0], expected)
    single = torch.zeros(1, 5, 5)
    single[0, 2, 2] = 1
    assert torch.equal(boundary_targets(single), single)
    assert boundary_targets(torch.zeros(1, 5, 5)).sum() == 0
    full = boundary_targets(torch.ones(1, 5, 5))[0]
    assert full.sum() == 16 and full[1:4, 1:4].sum() == 0  # the map's outer ring only


def test_boundary_loss_hand_value():
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 2:6] = 1  # boundary: 12 pixels (see the square test)
    logits = torch.zeros(1, 8, 8)
    # BCE = ln 2 everywhere; Dice = 1 - (2 * 0.5 * 12 + 1) / (0.5 * 64 + 12 + 1)
    expected = math.log(2) + 1 - 13 / 45
    assert boundary_loss(logits, mask).item() == pytest.approx(expected, rel=1e-6)


def test_boundary_loss_resizes_targets_to_the_prediction():
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 2:6] = 1
    logits = torch.zeros(1, 4, 4)
    # nearest 8 -> 4 keeps rows/cols 0, 2, 4, 6 of the ring: (2,2), (2,4), (4,2) are on it, (4,4) is not
    targets = 3
    expected = math.log(2) + 1 - (2 * 0.5 * targets + 1) / (0.5 * 16 + targets + 1)
    assert boundary_loss(logits, mask).item() == pytest.approx(expected, rel=1e-6)


def test_dice_and_empty_batch():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # RoI 0: 1 - (2 + 1) / (1 + 1 + 1) = 0; RoI 1: 1 - 1 / (1 + 0 + 1) = 0.5
    assert dice_loss(probs, targets).item() == pytest.approx(0.25)
    empty = torch.zeros(0, 28, 28, requires_grad=True)
    loss = boundary_loss(empty, torch.zeros(0, 28, 28))
    loss.backward()
    assert loss.item() == 0.0


def test_head_shapes_and_two_way_fusion():
    torch.manual_seed(0)
    head = BoundaryPreservingMaskHead(
        in_channels=8, num_classes=3, conv_dim=8, num_convs=2, num_boundary_convs=1
    )
    mask_feats = torch.randn(2, 8, 7, 7)
    boundary_feats = torch.randn(2, 8, 14, 14)
    out = head(mask_feats, boundary_features=boundary_feats)
    mask_logits, boundary_logits = out.logits, out.boundary_logits
    assert mask_logits.shape == (2, 3, 14, 14) and boundary_logits.shape == (2, 3, 14, 14)
    assert out.features.shape == (2, 8, 7, 7)  # the fused mask features (HTC's flow)
    # boundary -> mask fusion: the mask output depends on the boundary features, and vice versa
    other = head(mask_feats, boundary_features=boundary_feats + 1.0)
    assert not torch.allclose(other.logits, mask_logits)
    other = head(mask_feats + 1.0, boundary_features=boundary_feats)
    assert not torch.allclose(other.boundary_logits, boundary_logits)
    # without pooled boundary features the mask features are upsampled
    assert head(mask_feats).boundary_logits.shape == (2, 3, 14, 14)


def test_head_trains_with_mask_and_boundary_losses():
    torch.manual_seed(0)
    head = BoundaryPreservingMaskHead(
        in_channels=4, num_classes=1, conv_dim=8, num_convs=1, num_boundary_convs=1
    )
    feats = torch.randn(3, 4, 4, 4)
    targets = torch.zeros(3, 8, 8)
    targets[:, 2:6, 2:6] = 1
    optim = torch.optim.Adam(head.parameters(), lr=3e-2)
    losses = []
    for _ in range(15):
        out = head(feats)
        mask_logits, boundary_logits = out.logits, out.boundary_logits
        loss = torch.nn.functional.binary_cross_entropy_with_logits(mask_logits[:, 0], targets)
        loss = loss + boundary_loss(boundary_logits[:, 0], targets)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
