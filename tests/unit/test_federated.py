"""Federated loss against hand-computed values and detectron2's ``get_fed_loss_classes`` (transcribed)."""

import io
import math

import numpy as np
import pytest
import torch

from lvisctl.losses.federated import FederatedLoss, fed_loss_weights


def d2_get_fed_loss_classes(gt_classes, num_fed_loss_classes, num_classes, weight):
    """detectron2 fast_rcnn.py ``get_fed_loss_classes``, verbatim apart from the free-function form."""
    unique_gt_classes = torch.unique(gt_classes)
    prob = unique_gt_classes.new_ones(num_classes + 1).float()
    prob[-1] = 0
    if len(unique_gt_classes) < num_fed_loss_classes:
        prob[:num_classes] = weight.float().clone()
        prob[unique_gt_classes] = 0
        sampled_negative_classes = torch.multinomial(
            prob, num_fed_loss_classes - len(unique_gt_classes), replacement=False
        )
        fed_loss_classes = torch.cat([unique_gt_classes, sampled_negative_classes])
    else:
        fed_loss_classes = unique_gt_classes
    return fed_loss_classes


def bce(z: float, y: float) -> float:
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_weights_are_image_count_to_the_half():
    np.testing.assert_allclose(fed_loss_weights([16, 9, 0, 4]).numpy(), [4.0, 3.0, 0.0, 2.0])


def test_loss_hand_computed_without_sampling():
    # num_fed_classes = 3 and the batch holds classes 1, 3 and background (3 unique, detectron2 counts the
    # background): no draw, so the federated classes are 1 and 3 only; class 2 and 4 columns are ignored.
    loss = FederatedLoss([5, 5, 5, 5], num_fed_classes=3)
    logits = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    labels = torch.tensor([1, 3, 0])
    value = loss(logits, labels)
    expected = (bce(1.0, 1) + bce(0.5, 0)) + (bce(0.0, 0) + bce(-1.0, 1)) + (bce(2.0, 0) + bce(2.0, 0))
    assert value.item() == pytest.approx(expected / 3, rel=1e-6)
    assert loss.class_mask(labels).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_gradient_only_on_federated_columns():
    loss = FederatedLoss([5, 5, 5, 5], num_fed_classes=3)
    logits = torch.zeros(3, 4, requires_grad=True)
    loss(logits, torch.tensor([1, 3, 0])).backward()
    # d/dz of BCE at z = 0 is 0.5 - y, divided by the 3 proposals
    expected = np.array([[-0.5, 0, 0.5, 0], [0.5, 0, -0.5, 0], [0.5, 0, 0.5, 0]]) / 3
    np.testing.assert_allclose(logits.grad.numpy(), expected, rtol=1e-6, atol=1e-8)


def test_sampling_equals_detectron2_given_the_same_random_stream():
    counts = np.arange(1, 31) ** 2  # 30 classes
    loss = FederatedLoss(counts, num_fed_classes=8, seed=123)
    torch.manual_seed(123)  # detectron2 draws from the global CPU generator; same seed, same stream
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        labels = torch.randint(0, 31, (6,), generator=g)
        gt = torch.where(labels == 0, torch.tensor(30), labels - 1)
        expected = d2_get_fed_loss_classes(gt, 8, 30, fed_loss_weights(counts))
        assert torch.equal(loss.fed_classes(labels), expected)


def test_draws_follow_the_weights_and_skip_zero_weight_and_present_classes():
    # Weights 4, 3, 0, 2; class 1 present with background -> one draw among classes 2 and 4 (3 : 2).
    loss = FederatedLoss([16, 9, 0, 4], num_fed_classes=3, seed=0)
    drawn = [int(loss.fed_classes(torch.tensor([1, 0]))[-1]) for _ in range(2000)]
    assert set(drawn) == {1, 3}  # detectron2 indices of classes 2 and 4
    assert drawn.count(1) / len(drawn) == pytest.approx(0.6, abs=0.04)


def test_fewer_classes_than_asked_takes_all_with_weight():
    loss = FederatedLoss([16, 9, 0, 4], seed=0)  # 50 asked, 4 classes
    assert loss.class_mask(torch.tensor([0, 0])).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_seeded_and_resumable():
    labels = torch.tensor([1, 0, 0])
    a, b = (
        FederatedLoss(np.ones(40), num_fed_classes=5, seed=3),
        FederatedLoss(np.ones(40), num_fed_classes=5, seed=3),
    )
    first = [a.fed_classes(labels) for _ in range(3)]
    assert all(torch.equal(x, b.fed_classes(labels)) for x in first)
    other = FederatedLoss(np.ones(40), num_fed_classes=5, seed=4)
    assert not all(torch.equal(x, other.fed_classes(labels)) for x in first)
    # plain tensors only, so shape-matched loading (engine.init_weights) and weights_only loads handle it
    assert all(isinstance(v, torch.Tensor) for v in a.state_dict().values())
    assert list(a.state_dict()) == ["generator_state"]
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    resumed = FederatedLoss(np.ones(40), num_fed_classes=5, seed=99)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        assert torch.equal(a.fed_classes(labels), resumed.fed_classes(labels))


def test_classifier_init_as_detectron2():
    linear = torch.nn.Linear(1024, 4)
    FederatedLoss([5, 5, 5, 5]).init_classifier(linear)
    assert torch.equal(linear.bias.detach(), torch.zeros(4))  # detectron2: bias 0 even with sigmoid CE
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.1)
