"""Seesaw loss against hand-computed values and a numpy transcription of mmdet 3.3's ``seesaw_loss.py``."""

import io
import math

import numpy as np
import pytest
import torch

from lvisctl.losses.seesaw import SeesawLoss

K = 3
EPS32 = float(np.finfo(np.float32).eps)


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_seesaw(logits, labels, cum, weights=None, p=0.8, q=2.0, eps=1e-2):
    """Loss and d loss / d logits, one proposal at a time (labels: mmdet's 0..K-1, K = background)."""
    logits = np.asarray(logits, dtype=np.float64)
    n = len(labels)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    avg = max((w > 0).sum(), 1) + EPS32
    counts = np.maximum(np.asarray(cum, dtype=np.float64), 1)
    loss, grad = 0.0, np.zeros_like(logits)
    for r in range(n):
        cls, obj, i = logits[r, :K], logits[r, K:], labels[r]
        if i < K:
            s = np_softmax(cls)
            adj = cls.copy()
            for j in range(K):
                if j == i:
                    continue
                m = (counts[j] / counts[i]) ** p if counts[j] < counts[i] else 1.0
                ratio = s[j] / max(s[i], eps)
                c = ratio**q if ratio > 1 else 1.0
                adj[j] += math.log(m * c)
            prob = np_softmax(adj)
            loss += -math.log(prob[i]) * w[r] / avg
            grad[r, :K] = (prob - np.eye(K)[i]) * w[r] / avg
        t = 1 if i == K else 0
        po = np_softmax(obj)
        loss += -math.log(po[t]) * w[r] / avg
        grad[r, K:] = (po - np.eye(2)[t]) * w[r] / avg
    return loss, grad


def test_hand_computed_zero_logits():
    # lvisctl labels [1, 1, 1, 2, 0] = mmdet [0, 0, 0, 1, 3]: cum_samples becomes [3, 1, 0, 1] first.
    # Class 0 (N=3) proposals: the other two logits shift by log((1/3) ** 0.8) (N clamped at 1);
    # uniform scores -> no compensation. Class 1 (N=1): no mitigation. Objectness: log 2 each.
    loss = SeesawLoss(K)
    value = loss(torch.zeros(5, K + 2), torch.tensor([1, 1, 1, 2, 0]))
    expected = (3 * math.log(1 + 2 * 3**-0.8) + math.log(3) + 5 * math.log(2)) / (5 + EPS32)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert loss.cum_samples.tolist() == [3.0, 1.0, 0.0, 1.0]


def test_compensation_hand_computed():
    # One class-0 proposal whose class-1 score is e^2 times its own: C_01 = (e^2) ** 2 = e^4 -> the class-1
    # logit is raised by 4; class 2 (score e^-1 times) is not compensated. cum_samples all equal -> M = 1.
    loss = SeesawLoss(K)
    loss.cum_samples.copy_(torch.tensor([9.0, 10.0, 10.0, 0.0]))  # class 0 reaches 10 with this batch
    logits = torch.tensor([[0.0, 2.0, -1.0, 0.0, 0.0]])
    value = loss(logits, torch.tensor([1]))
    expected = -math.log(1 / (1 + math.exp(6.0) + math.exp(-1.0))) + math.log(2)
    assert value.item() == pytest.approx(expected / (1 + EPS32), rel=1e-6)


def test_values_and_gradients_match_numpy_over_two_batches():
    g = torch.Generator().manual_seed(0)
    loss = SeesawLoss(K)
    cum = np.zeros(K + 1)
    for labels in ([1, 1, 1, 2, 0, 3, 1], [3, 0, 0, 1, 2, 2]):
        lab = torch.tensor(labels)
        mm = np.array([K if v == 0 else v - 1 for v in labels])
        cum += np.bincount(mm, minlength=K + 1)  # mmdet updates before computing the loss
        logits = (torch.randn(len(labels), K + 2, generator=g) * 3).requires_grad_()
        weights = torch.ones(len(labels))
        weights[-1] = 0.0  # an ignored proposal: no loss, still counted in cum_samples (as mmdet)
        value = loss(logits, lab, weights)
        value.backward()
        exp_loss, exp_grad = np_seesaw(logits.detach().numpy(), mm, cum[:K], weights.numpy())
        assert value.item() == pytest.approx(exp_loss, rel=1e-5)
        assert torch.isfinite(logits.grad).all()
        np.testing.assert_allclose(logits.grad.numpy(), exp_grad, rtol=1e-4, atol=1e-7)
    # by hand: batch 1 (mmdet) [0,0,0,1,3,2,0] -> [4,1,1,1]; batch 2 [2,3,3,0,1,1] -> +[1,2,1,2]
    assert loss.cum_samples.tolist() == [5.0, 3.0, 2.0, 3.0] == cum.tolist()


def test_only_background_keeps_graph_and_eval_does_not_count():
    loss = SeesawLoss(K)
    logits = torch.zeros(2, K + 2, requires_grad=True)
    value = loss(logits, torch.tensor([0, 0]))
    value.backward()
    assert value.item() == pytest.approx(2 * math.log(2) / (2 + EPS32), rel=1e-6)
    loss.eval()
    loss(logits, torch.tensor([1, 1]))
    assert loss.cum_samples.tolist() == [0.0, 0.0, 0.0, 2.0]


def test_activation_accuracy_and_layout():
    loss = SeesawLoss(K)
    assert loss.num_logits == K + 2
    logits = torch.tensor([[math.log(2), 0.0, 0.0, math.log(3), 0.0], [0.0, 0.0, 5.0, 0.0, 1.0]])
    scores = loss.scores(logits)
    # softmax over classes times P(object) = softmax(objectness)[0]
    np.testing.assert_allclose(scores[0].numpy(), np.array([0.5, 0.25, 0.25]) * 0.75, rtol=1e-6)
    assert scores.shape == (2, K)
    acc = loss.accuracy(logits, torch.tensor([1, 2]))
    # objectness: row 0 says object (right), row 1 says background (wrong: it is class 2); classes 1 of 2
    assert acc["acc_objectness"].item() == pytest.approx(50.0)
    assert acc["acc_classes"].item() == pytest.approx(50.0)


def test_cum_samples_saved_and_restored_bit_identically():
    loss = SeesawLoss(K)
    loss(torch.randn(6, K + 2), torch.tensor([1, 2, 2, 3, 0, 0]))
    buf = io.BytesIO()
    torch.save(loss.state_dict(), buf)
    buf.seek(0)
    resumed = SeesawLoss(K)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    logits, labels = torch.randn(5, K + 2), torch.tensor([3, 1, 0, 2, 2])
    assert torch.equal(loss(logits, labels), resumed(logits, labels))
    assert torch.equal(loss.cum_samples, resumed.cum_samples)
