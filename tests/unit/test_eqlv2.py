"""EQLv2 against hand-computed values and a numpy transcription of the authors' ``eqlv2.py``."""

import io
import math

import numpy as np
import pytest
import torch

from lvisctl.losses.eqlv2 import EQLv2Loss

K = 2
LOG2 = math.log(2)


def f(x: float) -> float:
    return 1 / (1 + math.exp(-12 * (x - 0.8)))


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_two_steps_hand_computed():
    loss = EQLv2Loss(K)
    assert loss.num_logits == K + 1
    # Step 1: pos_neg = 100 -> q = f(100) = 1, r = 1; zero logits -> every BCE is log 2, |p - y| = 0.5.
    # Labels 1, 2, background -> target columns 0, 1, 2 (the objectness column).
    v1 = loss(torch.zeros(3, K + 1), torch.tensor([1, 2, 0]))
    assert v1.item() == pytest.approx(3 * LOG2, rel=1e-6)
    # Each class: one positive (0.5) and two negatives (0.5 + 0.5); the objectness column is not collected.
    assert loss.pos_grad.tolist() == [0.5, 0.5]
    assert loss.neg_grad.tolist() == [1.0, 1.0]
    assert loss.pos_neg.tolist() == pytest.approx([0.5, 0.5], rel=1e-6)
    # Step 2 uses the ratio 0.5: q = f(0.5) = 1 / (1 + e^3.6), r = 1 + 4 (1 - q). Labels 1, 1, background.
    q = f(0.5)
    r = 1 + 4 * (1 - q)
    v2 = loss(torch.zeros(3, K + 1), torch.tensor([1, 1, 0]))
    # class-1 proposals: r (own) + q (class 2) + 1 (objectness); background: q + q + 1 (its objectness target)
    assert v2.item() == pytest.approx(LOG2 * (2 * (r + q + 1) + (2 * q + 1)) / 3, rel=1e-6)
    pos = [0.5 + 2 * 0.5 * r, 0.5]
    neg = [1.0 + 0.5 * q, 1.0 + 3 * 0.5 * q]
    assert loss.pos_grad.tolist() == pytest.approx(pos, rel=1e-6)
    assert loss.neg_grad.tolist() == pytest.approx(neg, rel=1e-6)
    assert loss.pos_neg.tolist() == pytest.approx([pos[0] / neg[0], pos[1] / neg[1]], rel=1e-6)


def np_eqlv2_step(logits, cols, pos_grad, neg_grad, pos_neg):
    """The authors' forward + collect_grad in numpy: (loss, d loss / d logits, new accumulators)."""
    n, c = logits.shape
    target = np.eye(c)[cols]
    neg_w = np.concatenate([1 / (1 + np.exp(-12 * (pos_neg - 0.8))), [1.0]])
    pos_w = 1 + 4 * (1 - neg_w)
    w = pos_w * target + neg_w * (1 - target)
    p = np_sigmoid(logits)
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    grad = np.abs(target * (p - 1) + (1 - target) * p)
    pos_grad = pos_grad + (grad * target * w).sum(0)[:-1]
    neg_grad = neg_grad + (grad * (1 - target) * w).sum(0)[:-1]
    return (bce * w).sum() / n, w * (p - target) / n, (pos_grad, neg_grad, pos_grad / (neg_grad + 1e-10))


def test_three_random_steps_match_numpy_values_gradients_and_accumulators():
    k = 4
    loss = EQLv2Loss(k)
    g = torch.Generator().manual_seed(0)
    state = (np.zeros(k), np.zeros(k), np.full(k, 100.0))
    for step in range(3):
        labels = torch.randint(0, k + 1, (9,), generator=g)
        logits = (torch.randn(9, k + 1, generator=g) * 2).requires_grad_()
        value = loss(logits, labels)
        value.backward()
        cols = np.where(labels.numpy() == 0, k, labels.numpy() - 1)
        exp_loss, exp_grad, state = np_eqlv2_step(logits.detach().numpy().astype(np.float64), cols, *state)
        assert value.item() == pytest.approx(exp_loss, rel=1e-5), step
        assert torch.isfinite(logits.grad).all()
        np.testing.assert_allclose(logits.grad.numpy(), exp_grad, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(loss.pos_grad.numpy(), state[0], rtol=1e-5)
        np.testing.assert_allclose(loss.neg_grad.numpy(), state[1], rtol=1e-5)
        np.testing.assert_allclose(loss.pos_neg.numpy(), state[2], rtol=1e-5)


def test_dropped_proposals_and_eval_collect_nothing():
    loss = EQLv2Loss(K)
    value = loss(torch.zeros(2, K + 1), torch.tensor([1, 2]), torch.tensor([1.0, 0.0]))
    assert value.item() == pytest.approx(3 * LOG2, rel=1e-6)  # mean over the one kept proposal
    assert loss.pos_grad.tolist() == [0.5, 0.0]
    assert loss.neg_grad.tolist() == [0.0, 0.5]
    loss.eval()
    loss(torch.zeros(2, K + 1), torch.tensor([1, 2]))
    assert loss.pos_grad.tolist() == [0.5, 0.0]


def test_activation_and_classifier_init():
    loss = EQLv2Loss(K)
    logits = torch.tensor([[0.0, math.log(3), math.log(1 / 3)]])  # p = 0.5, 0.75; background p = 0.25
    np.testing.assert_allclose(loss.scores(logits).numpy(), [[0.5 * 0.75, 0.75 * 0.75]], rtol=1e-6)
    linear = torch.nn.Linear(8, loss.num_logits)
    loss.init_classifier(linear)
    np.testing.assert_allclose(torch.sigmoid(linear.bias).detach().numpy(), np.full(K + 1, 1e-3), rtol=1e-4)


def test_accumulators_saved_and_restored_bit_identically():
    loss = EQLv2Loss(K)
    loss(torch.randn(4, K + 1), torch.tensor([1, 2, 0, 1]))
    buf = io.BytesIO()
    torch.save(loss.state_dict(), buf)
    buf.seek(0)
    resumed = EQLv2Loss(K)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    logits, labels = torch.randn(5, K + 1), torch.tensor([2, 1, 0, 0, 2])
    assert torch.equal(loss(logits, labels), resumed(logits, labels))
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(getattr(loss, name), getattr(resumed, name))
