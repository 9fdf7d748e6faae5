"""The box-classification loss interface, with the softmax cross-entropy and sigmoid BCE baselines.

Every classifier loss (softmax CE, sigmoid BCE, EQL, Balanced GroupSoftmax) is a ``ClassificationLoss``:

* ``num_logits``: how many outputs the box predictor's classifier must produce (softmax: K + 1 with
  column 0 = background; sigmoid/EQL: K, background is "no class fires"; BAGS: K + 1 + number of groups);
* ``loss(logits, labels, weights=None)``: labels are contiguous ``0..K`` (0 = background); ``weights`` is a
  per-proposal weight (0 drops a proposal, e.g. ignored pseudo-label overlaps; the image ``loss_weight``
  scales the others). The sum of weighted per-proposal losses is divided by the number of proposals with
  a non-zero weight, so with all weights 1 it is the usual mean over the sampled proposals;
* ``scores(logits) -> Tensor[N, K]``: foreground class scores used at test time (softmax drops the
  background column; sigmoid losses apply sigmoid; BAGS recombines its group probabilities);
* ``init_classifier(linear)``: set the classifier's initial bias (sigmoid losses start at a small prior).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClassificationLoss(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    @property
    def num_logits(self) -> int:
        raise NotImplementedError

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def scores(self, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def init_classifier(self, linear: nn.Linear) -> None:
        nn.init.normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)


def weighted_mean(per_proposal: Tensor, weights: Tensor | None) -> Tensor:
    """sum_i w_i l_i / #{i: w_i > 0} (plain mean when ``weights`` is None); 0 (with grad) when empty."""
    if weights is None:
        return per_proposal.sum() / max(per_proposal.numel(), 1)
    count = (weights > 0).sum().clamp(min=1)
    return (per_proposal * weights).sum() / count


class SoftmaxCELoss(ClassificationLoss):
    """Standard Mask R-CNN classifier: softmax over K + 1 logits, cross-entropy."""

    @property
    def num_logits(self) -> int:
        return self.num_classes + 1

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        return weighted_mean(F.cross_entropy(logits.float(), labels, reduction="none"), weights)

    def scores(self, logits: Tensor) -> Tensor:
        return F.softmax(logits.float(), dim=-1)[:, 1:]


class SigmoidBCELoss(ClassificationLoss):
    """One sigmoid per foreground class; a background proposal has an all-zero target.

    Per proposal the loss is the sum over the K classes of binary cross-entropy (times a per-class weight
    from ``class_weights``, which subclasses such as EQL override).
    """

    prior_prob = 0.01  # initial class probability, as RetinaNet, so K negatives do not swamp the start

    @property
    def num_logits(self) -> int:
        return self.num_classes

    def targets(self, logits: Tensor, labels: Tensor) -> Tensor:
        """One-hot over the K foreground columns (label 0 = background -> all zeros)."""
        onehot = torch.zeros(logits.shape[0], self.num_classes + 1, device=logits.device, dtype=torch.float32)
        onehot[torch.arange(labels.numel(), device=labels.device), labels] = 1.0
        return onehot[:, 1:]

    def class_weights(self, target: Tensor, labels: Tensor) -> Tensor | None:
        return None

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        target = self.targets(logits, labels)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        cw = self.class_weights(target, labels)
        if cw is not None:
            bce = bce * cw
        return weighted_mean(bce.sum(dim=1), weights)

    def scores(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits.float())

    def init_classifier(self, linear: nn.Linear) -> None:
        nn.init.normal_(linear.weight, std=0.01)
        nn.init.constant_(linear.bias, -math.log((1 - self.prior_prob) / self.prior_prob))
