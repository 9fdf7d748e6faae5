"""EQL and the baseline classification losses, against values computed by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvisctl.losses.classification import SigmoidBCELoss, SoftmaxCELoss, weighted_mean
from lvisctl.losses.eql import EQL_LAMBDA, EqualizationLoss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def bce(x: float, y: int) -> float:
    """Binary cross-entropy with logits: softplus(x) - x * y."""
    return softplus(x) - x * y


# 3 classes: class 1 frequent (f = 0.5), classes 2 and 3 tail (f = 0.001, 0.0001 < lambda = 1.76e-3)
FREQ = np.array([0.5, 0.001, 0.0001])
LOGITS = torch.tensor([[2.0, -1.0, 0.0], [0.0, 1.0, -2.0], [-1.0, 0.0, 1.0]])
LABELS = torch.tensor([1, 2, 0])  # r1 foreground class 1, r2 foreground class 2, r3 background


def test_lambda_is_the_papers_value():
    assert EQL_LAMBDA == pytest.approx(1.76e-3)
    assert EqualizationLoss(FREQ).tail.tolist() == [0.0, 1.0, 1.0]


def test_eql_weights_by_hand():
    eql = EqualizationLoss(FREQ)
    target = eql.targets(LOGITS, LABELS)
    assert target.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    # w_j = 1 - E(r) T(f_j) (1 - y_j):
    # r1 (fg, y=[1,0,0]): [1, 1-1*1*1, 1-1*1*1] = [1, 0, 0]
    # r2 (fg, y=[0,1,0]): [1, 1-1*1*0, 1-1*1*1] = [1, 1, 0]
    # r3 (bg, E=0):       [1, 1, 1]
    assert eql.class_weights(target, LABELS).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_eql_loss_by_hand():
    kept = [bce(2, 1), bce(0, 0), bce(1, 1), bce(-1, 0), bce(0, 0), bce(1, 0)]  # terms with w = 1
    expected = sum(kept) / 3  # summed over classes, divided by the 3 proposals
    assert expected == pytest.approx(1.151003, abs=1e-6)
    assert EqualizationLoss(FREQ).loss(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_plain_sigmoid_keeps_all_terms():
    dropped = bce(-1, 0) + bce(0, 0) + bce(-2, 0)  # r1 -> classes 2, 3 and r2 -> class 3
    expected = (sum([bce(2, 1), bce(0, 0), bce(1, 1), bce(-1, 0), bce(0, 0), bce(1, 0)]) + dropped) / 3
    assert expected == pytest.approx(1.528782, abs=1e-6)
    assert SigmoidBCELoss(3).loss(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)


def test_eql_gradients_on_tail_class():
    logits = LOGITS.clone().requires_grad_(True)
    EqualizationLoss(FREQ).loss(logits, LABELS).backward()
    g = logits.grad
    # r1 (a class-1 foreground) sends no negative gradient to tail classes 2 and 3
    assert g[0, 1].item() == 0.0 and g[0, 2].item() == 0.0
    # r2's own class (tail) is trained as a positive: (sigmoid(1) - 1) / 3
    assert g[1, 1].item() == pytest.approx((1 / (1 + math.exp(-1)) - 1) / 3, rel=1e-6)
    # the background proposal still suppresses the tail class: sigmoid(0) / 3
    assert g[2, 1].item() == pytest.approx(0.5 / 3, rel=1e-6)
    # frequent class 1 still gets r2's negative gradient: sigmoid(0) / 3
    assert g[1, 0].item() == pytest.approx(0.5 / 3, rel=1e-6)


def test_proposal_weights_drop_and_scale():
    per = torch.tensor([1.0, 2.0, 4.0])
    # weights [1, 0, 0.5]: (1*1 + 4*0.5) / 2 proposals with a non-zero weight
    assert weighted_mean(per, torch.tensor([1.0, 0.0, 0.5])).item() == pytest.approx(1.5)
    assert weighted_mean(per, None).item() == pytest.approx(7 / 3)
    eql = EqualizationLoss(FREQ)
    only_r3 = eql.loss(LOGITS, LABELS, torch.tensor([0.0, 0.0, 1.0])).item()
    assert only_r3 == pytest.approx(bce(-1, 0) + bce(0, 0) + bce(1, 0), rel=1e-6)


def test_softmax_matches_cross_entropy_and_scores():
    logits = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 0.0, 3.0]])
    labels = torch.tensor([1, 0])
    ce = SoftmaxCELoss(3)
    assert ce.num_logits == 4
    assert ce.loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    # p(class 1 | row 0) = e^2 / (e^1 + e^2 + e^0 + e^-1)
    p = math.exp(2) / (math.exp(1) + math.exp(2) + 1 + math.exp(-1))
    scores = ce.scores(logits)
    assert scores.shape == (2, 3)
    assert scores[0, 0].item() == pytest.approx(p, rel=1e-6)


def test_sigmoid_scores_and_bias_init():
    loss = SigmoidBCELoss(3)
    assert loss.num_logits == 3
    assert loss.scores(torch.zeros(1, 3)).tolist() == [[0.5, 0.5, 0.5]]
    linear = torch.nn.Linear(4, 3)
    loss.init_classifier(linear)
    assert torch.sigmoid(linear.bias).tolist() == pytest.approx([0.01] * 3, rel=1e-5)
