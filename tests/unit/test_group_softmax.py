"""Balanced GroupSoftmax: bins, logit layout, group labels, others sampling, loss and scores by hand."""

import math

import numpy as np
import pytest
import torch

from lvisctl.data.categories import CategoryMap, CategoryStats
from lvisctl.losses.group_softmax import BalancedGroupSoftmax, group_of_counts

LN2 = math.log(2.0)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bins_are_lower_inclusive_upper_exclusive():
    counts = [0, 9, 10, 99, 100, 999, 1000, 5000]
    assert group_of_counts(counts).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_layout_and_group_labels():
    bags = BalancedGroupSoftmax([0, 9, 10, 99, 100, 999, 1000, 5000])
    assert bags.group_classes == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert bags.num_groups == 5 and bags.num_logits == 8 + 1 + 5
    assert bags.slices == [(0, 2), (2, 3), (5, 3), (8, 3), (11, 3)]
    labels = bags.group_labels(torch.tensor([0, 1, 2, 3, 8]))
    assert [g.tolist() for g in labels] == [
        [0, 1, 1, 1, 1],  # background group: 0 = background, 1 = foreground
        [0, 1, 2, 0, 0],  # [0, 10): others, class 1, class 2
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 2],
    ]


def test_empty_bins_are_dropped():
    bags = BalancedGroupSoftmax([3, 2000])
    assert bags.group_classes == [[1], [2]] and bags.num_logits == 6


def test_from_category_stats_instance_counts():
    stats = CategoryStats(
        category_map=CategoryMap([7, 3, 11]),
        names=("a", "b", "c"),
        image_count=np.array([1, 5, 50]),
        instance_count=np.array([1, 12, 1500]),
        frequency=("r", "c", "f"),
        num_images=60,
    )
    bags = BalancedGroupSoftmax(stats.instance_count)
    assert bags.group_classes == [[1], [2], [3]] and bags.num_classes == stats.num_classes


def test_loss_by_hand():
    bags = BalancedGroupSoftmax([5, 50, 500])  # one class per group; slices (0,2) (2,2) (4,2) (6,2)
    logits = torch.zeros(3, 8)
    logits[1, 1] = 2.0  # RoI 1 (class 1): foreground logit of the background group
    logits[2, 5] = 1.0  # RoI 2 (class 2): its class logit in group 2
    labels = torch.tensor([0, 1, 2])
    # others ratio 8: every "others" RoI is kept (8 * 1 >= 2), so each group averages over 3 RoIs
    bg = (LN2 + _softplus(-2.0) + LN2) / 3
    group1 = (LN2 + LN2 + LN2) / 3
    group2 = (LN2 + LN2 + _softplus(-1.0)) / 3  # RoI 2 is label 1 in group 2: -log(e / (1 + e))
    group3 = 0.0  # no RoI of class 3: the group is skipped
    loss = bags.loss(logits.requires_grad_(), labels)
    assert loss.item() == pytest.approx(bg + group1 + group2 + group3, rel=1e-6)
    loss.backward()
    assert logits.grad[:, 6:].abs().sum() == 0  # group 3 got nothing


def test_others_sampling_ratio():
    torch.manual_seed(0)
    bags = BalancedGroupSoftmax([5, 50])
    labels = torch.tensor([1] + [0] * 20)
    valid = torch.ones(21, dtype=torch.bool)
    group1 = bags.group_labels(labels)[1]
    selected = bags._sample_others(group1, valid)
    assert selected.sum().item() == 1 + 8 and selected[0] == 1
    labels = torch.tensor([1, 1] + [0] * 20)
    assert bags._sample_others(bags.group_labels(labels)[1], torch.ones(22, dtype=torch.bool)).sum() == 2 + 16
    assert bags._sample_others(bags.group_labels(labels)[2], torch.ones(22, dtype=torch.bool)).sum() == 0
    labels = torch.tensor([1, 1] + [0] * 10)  # 16 >= 10 others: all of them are kept
    assert bags._sample_others(bags.group_labels(labels)[1], torch.ones(12, dtype=torch.bool)).sum() == 12
    # RoIs marked invalid (weight 0) are never sampled
    valid = torch.ones(12, dtype=torch.bool)
    valid[5:] = False
    assert bags._sample_others(bags.group_labels(labels)[1], valid)[5:].sum() == 0
    half = BalancedGroupSoftmax([5, 50], others_ratio=0.5)
    labels = torch.tensor([1, 1, 1] + [2] * 5 + [0] * 5)
    assert half._sample_others(half.group_labels(labels)[1], torch.ones(13, dtype=torch.bool)).sum() == 3 + 1


def test_weights_drop_ignored_rois_and_scale_the_rest():
    torch.manual_seed(0)
    bags = BalancedGroupSoftmax([5, 50, 500])
    logits = torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 3])
    dropped = bags.loss(logits, labels, weights=torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert dropped.item() == pytest.approx(bags.loss(logits[:3], labels[:3]).item(), rel=1e-6)
    # doubling every weight doubles the loss (the averaging counts RoIs, not weights)
    doubled = bags.loss(logits, labels, weights=torch.full((4,), 2.0))
    assert doubled.item() == pytest.approx(2 * bags.loss(logits, labels).item(), rel=1e-6)
    with pytest.raises(ValueError):
        bags.loss(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_scores_recombine_groups_by_hand():
    bags = BalancedGroupSoftmax([5, 50])  # slices (0,2) (2,2) (4,2)
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, math.log(4.0), math.log(2.0), 0.0]])
    # P(bg) = 1/4, P(fg) = 3/4; P(class 1 | group 1) = 4/5; P(class 2 | group 2) = 1/3
    assert bags.probabilities(logits)[0].tolist() == pytest.approx([0.25, 0.75 * 0.8, 0.75 / 3], rel=1e-6)
    # the core's post-processing gets the K foreground columns
    assert bags.scores(logits)[0].tolist() == pytest.approx([0.75 * 0.8, 0.75 / 3], rel=1e-6)


def test_scores_shape_and_bounds():
    torch.manual_seed(0)
    bags = BalancedGroupSoftmax([0, 9, 10, 99, 100, 999, 1000, 5000])
    scores = bags.probabilities(torch.randn(5, bags.num_logits) * 3)
    assert scores.shape == (5, 9)
    assert (scores >= 0).all() and (scores <= 1).all()
    # no class score exceeds the RoI's foreground probability 1 - P(bg); the sum over classes may (one
    # softmax per group, not renormalised, as in the original), but not beyond 4 groups' worth
    p_fg = (1 - scores[:, :1]) + 1e-6
    assert (scores[:, 1:] <= p_fg).all() and (scores[:, 1:].sum(dim=1, keepdim=True) <= 4 * p_fg).all()
