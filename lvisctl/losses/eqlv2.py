"""Equalization Loss v2 (Tan et al., CVPR 2021, "Equalization Loss v2: A New Gradient Balance Approach").

Follows the authors' code (github tztztztztz/eqlv2, ``mmdet/models/losses/eqlv2.py``, class ``EQLv2``):

* K + 1 sigmoid outputs: the K classes, then a last "objectness" column whose target is 1 for background
  proposals (the authors' ``get_channel_num`` = K + 1, mmdet's background label K);
* per class j the accumulated positive and negative gradient magnitudes ``pos_grad[j]``, ``neg_grad[j]``
  and their ratio ``pos_neg[j] = pos_grad / (neg_grad + 1e-10)``, 100 before the first step;
* weights f(x) = 1 / (1 + exp(-gamma (x - mu))): negative weight q_j = f(pos_neg[j]), positive weight
  r_j = 1 + alpha (1 - q_j); the objectness column always has weight 1 (gamma=12, mu=0.8, alpha=4);
* loss = sum over proposals and K + 1 columns of weight * BCE, divided by the number of proposals;
* after the loss, the gradient magnitudes this step sends to the class logits, |sigmoid(z) - y| times the
  weight just used (the analytic d BCE / d z, as the authors compute it in ``collect_grad`` rather than
  from a backward hook), are added per class: into ``pos_grad`` for y = 1, ``neg_grad`` for y = 0; the
  objectness column is not collected; summed over processes when torch.distributed is initialized.
  So the weights of step t come from steps 1..t-1. Every rank then holds the same statistics, so the
  checkpoint (rank 0's) is every rank's state and DDP's buffer broadcast changes nothing.

Test-time activation (the authors' ``test_with_obj=True``): sigmoid(z_j) * (1 - sigmoid(z_bg)).

Differences from the authors' code, both inert with lvisctl's defaults: a per-proposal ``weights`` tensor
(the authors ignore theirs) scales both the loss (mean over the proposals with a non-zero weight) and the
collected gradients (a dropped proposal sends none); statistics are only collected in training mode.
Classifier init as the authors' ``ConvFCBBoxHead`` with ``use_sigmoid``: bias = logit of prior 0.001.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lvisctl.losses.classification import SigmoidBCELoss, weighted_mean
from lvisctl.registry import CLS_LOSSES

# The authors' initial ratio: high enough that both weights start at 1 (f(100) = 1 in float32).
INITIAL_POS_NEG = 100.0


@CLS_LOSSES.register("eqlv2", help="Equalization Loss v2, K + 1 sigmoids with objectness (Tan et al. 2021)")
class EQLv2Loss(SigmoidBCELoss):
    prior_prob = 1e-3  # the authors' bias_init_with_prob(0.001)

    def __init__(self, num_classes: int, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0) -> None:
        super().__init__(num_classes)
        self.gamma, self.mu, self.alpha = float(gamma), float(mu), float(alpha)
        # Persistent buffers: resume must continue from the same statistics to stay bit-identical.
        self.register_buffer("pos_grad", torch.zeros(num_classes))
        self.register_buffer("neg_grad", torch.zeros(num_classes))
        self.register_buffer("pos_neg", torch.full((num_classes,), INITIAL_POS_NEG))

    @property
    def num_logits(self) -> int:
        return self.num_classes + 1

    def targets(self, logits: Tensor, labels: Tensor) -> Tensor:
        """One-hot over K + 1 columns in the authors' layout: class l -> column l - 1, background -> K."""
        cols = torch.where(labels == 0, torch.full_like(labels, self.num_classes), labels - 1)
        return F.one_hot(cols, self.num_classes + 1).to(torch.float32)

    def map_func(self, x: Tensor) -> Tensor:
        return 1 / (1 + torch.exp(-self.gamma * (x - self.mu)))

    def column_weights(self) -> tuple[Tensor, Tensor]:
        """(positive weights r, negative weights q), each [K + 1]; the objectness column has 1 and 1."""
        neg_w = torch.cat([self.map_func(self.pos_neg), self.pos_neg.new_ones(1)])
        return 1 + self.alpha * (1 - neg_w), neg_w

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        logits = logits.float()
        target = self.targets(logits, labels)
        pos_w, neg_w = self.column_weights()
        weight = pos_w[None, :] * target + neg_w[None, :] * (1 - target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = weighted_mean((bce * weight).sum(dim=1), weights)
        if self.training:
            self.collect_grad(logits.detach(), target, weight, weights)
        return loss

    @torch.no_grad()
    def collect_grad(self, logits: Tensor, target: Tensor, weight: Tensor, weights: Tensor | None) -> None:
        grad = (torch.sigmoid(logits) - target).abs() * weight
        if weights is not None:
            grad = grad * weights.float()[:, None]
        pos_grad = (grad * target).sum(dim=0)[:-1]  # [:-1]: the objectness column is not collected
        neg_grad = (grad * (1 - target)).sum(dim=0)[:-1]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(pos_grad)
            dist.all_reduce(neg_grad)
        self.pos_grad += pos_grad
        self.neg_grad += neg_grad
        self.pos_neg = self.pos_grad / (self.neg_grad + 1e-10)

    def forward(self, cls_score: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        return self.loss(cls_score, labels, weights)

    def scores(self, logits: Tensor) -> Tensor:
        prob = torch.sigmoid(logits.float())
        return prob[:, :-1] * (1 - prob[:, -1:])
