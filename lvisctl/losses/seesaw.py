"""Seesaw loss (Wang et al., CVPR 2021, "Seesaw Loss for Long-Tailed Instance Segmentation").

Follows mmdet 3.3's ``mmdet/models/losses/seesaw_loss.py`` (``SeesawLoss`` + ``seesaw_ce_loss``) as it is
called by mmdet's ``BBoxHead.loss``:

* the classifier has K + 2 outputs, in mmdet's layout: K class logits, then the objectness pair
  ``[object, background]`` (kept so mmdet's Seesaw LVIS checkpoints can later be imported column for column);
* ``cum_samples`` [K + 1] (index K = background, mmdet's label convention) counts the proposals of every
  label seen so far; it is updated from the batch *before* the loss is computed, as mmdet does;
* foreground proposals get a softmax CE over the K class logits in which every *other* class j's logit is
  shifted by log S_ij, S_ij = M_ij * C_ij:

  - mitigation M_ij = (N_j / N_i) ** p when N_j < N_i, else 1 (N = ``cum_samples`` clamped at 1, i = the
    proposal's class);
  - compensation C_ij = (s_j / max(s_i, eps)) ** q when that ratio > 1, else 1 (s = softmax of the detached
    class logits);

* every proposal gets a softmax CE over the objectness pair (target 0 = object, 1 = background);
* both sums are divided by ``avg_factor`` = the number of proposals with a non-zero weight (at least 1), as
  ``BBoxHead.loss`` passes it, and ``loss`` returns ``loss_cls_classes + loss_cls_objectness`` (mmdet's
  ``return_dict=False``).

Test-time activation (mmdet's ``get_activation``): softmax over the class logits times the objectness
softmax's "object" probability.

Classifier: ``normed_temperature`` > 0 makes it mmdet's ``NormedLinear`` with that temperature (mmdet's
Seesaw LVIS configs: ``cls_predictor_cfg=dict(type='NormedLinear', tempearture=20)``; ``lvisctl
import-checkpoint`` sets 20 for those models); 0 (the default, ``SeesawLoss`` on its own) a plain linear
layer.

Distributed training: the batch's label counts are summed over the processes before they are added
(``torch.distributed`` initialised), so every rank holds the same, global ``cum_samples`` and the checkpoint
(rank 0's) is every rank's state. mmdet keeps per-rank counts (its DDP wrapper does not broadcast buffers);
the mitigation factor reads only count ratios, which the sum estimates from W times more samples.

lvisctl's labels are ``0..K`` with 0 = background; they are mapped to mmdet's ``0..K-1`` + K = background
internally. Differences from mmdet: ``cum_samples`` is updated only while the module is in training mode
(mmdet only calls its loss in training), so an evaluation pass cannot move the state of a run; and the
counts are summed over processes (above).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.losses.classification import ClassificationLoss, NormedLinear
from lvisctl.registry import CLS_LOSSES

# mmdet's weight_reduce_loss divides by (avg_factor + float32 eps); kept so values match it to the last bit.
_AVG_EPS = torch.finfo(torch.float32).eps


def mmdet_labels(labels: Tensor, num_classes: int) -> Tensor:
    """lvisctl labels (0 = background, 1..K) -> mmdet labels (0..K-1, K = background)."""
    return torch.where(labels == 0, torch.full_like(labels, num_classes), labels - 1)


def seesaw_weights(
    logits: Tensor, labels: Tensor, cum_samples: Tensor, p: float, q: float, eps: float
) -> Tensor:
    """S [N, K] for foreground proposals (mmdet labels 0..K-1): mitigation times compensation factors."""
    weights = logits.new_ones(logits.shape)
    if p > 0:
        counts = cum_samples.clamp(min=1)
        ratio = counts[None, :] / counts[:, None]  # [i, j] = N_j / N_i
        weights = weights * torch.where(ratio < 1.0, ratio.pow(p), torch.ones_like(ratio))[labels]
    if q > 0:
        scores = F.softmax(logits.detach(), dim=1)
        self_scores = scores[torch.arange(len(scores), device=scores.device), labels]
        ratio = scores / self_scores[:, None].clamp(min=eps)
        weights = weights * torch.where(ratio > 1.0, ratio.pow(q), torch.ones_like(ratio))
    return weights


def seesaw_ce(logits: Tensor, labels: Tensor, cum_samples: Tensor, p: float, q: float, eps: float) -> Tensor:
    """Per-proposal Seesaw CE over the K class logits (mmdet's ``seesaw_ce_loss`` with reduction 'none')."""
    onehot = F.one_hot(labels, logits.shape[1])
    weights = seesaw_weights(logits, labels, cum_samples, p, q, eps)
    return F.cross_entropy(logits + weights.log() * (1 - onehot), labels, reduction="none")


@CLS_LOSSES.register("seesaw", help="Seesaw loss, K + 2 outputs with objectness (Wang et al. 2021; mmdet)")
class SeesawLoss(ClassificationLoss):
    def __init__(
        self,
        num_classes: int,
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
        normed_temperature: float = 0.0,
    ) -> None:
        super().__init__(num_classes)
        self.p, self.q, self.eps = float(p), float(q), float(eps)
        self.normed_temperature = float(normed_temperature)
        # Persistent: a resumed run must continue from the same counts to stay bit-identical.
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1, dtype=torch.float))

    @property
    def num_logits(self) -> int:
        return self.num_classes + 2

    def classifier(self, in_dim: int) -> nn.Linear:
        if self.normed_temperature <= 0:
            return super().classifier(in_dim)
        # init_classifier then gives N(0, 0.01), bias 0: mmdet's NormedLinear.init_weights
        return NormedLinear(in_dim, self.num_logits, self.normed_temperature)

    def split(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(class logits [N, K], objectness logits [N, 2] = [object, background])."""
        return logits[..., :-2], logits[..., -2:]

    def accumulate(self, labels: Tensor) -> None:
        """Add the batch's proposals per label (mmdet labels) to ``cum_samples``."""
        counts = torch.bincount(labels, minlength=self.num_classes + 1).to(self.cum_samples.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)  # every rank adds the global counts (see the module docstring)
        self.cum_samples += counts

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        labels = mmdet_labels(labels, self.num_classes)
        if self.training:
            self.accumulate(labels)
        logits = logits.float()
        w = torch.ones_like(labels, dtype=torch.float) if weights is None else weights.float()
        avg_factor = (w > 0).sum().clamp(min=1).float() + _AVG_EPS
        classes, objectness = self.split(logits)
        pos = labels < self.num_classes
        if pos.any():
            cum = self.cum_samples[: self.num_classes]
            per = seesaw_ce(classes[pos], labels[pos], cum, self.p, self.q, self.eps)
            loss_classes = (per * w[pos]).sum() / avg_factor
        else:
            loss_classes = classes[pos].sum()  # 0 that keeps the graph, as mmdet
        obj_labels = (labels == self.num_classes).long()
        loss_obj = (F.cross_entropy(objectness, obj_labels, reduction="none") * w).sum() / avg_factor
        return loss_classes + loss_obj

    def forward(self, cls_score: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        return self.loss(cls_score, labels, weights)

    def scores(self, logits: Tensor) -> Tensor:
        classes, objectness = self.split(logits.float())
        return F.softmax(classes, dim=-1) * F.softmax(objectness, dim=-1)[..., [0]]

    def accuracy(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """mmdet's ``get_accuracy``: top-1 accuracy (percent) of objectness and of the foreground classes."""
        labels = mmdet_labels(labels, self.num_classes)
        classes, objectness = self.split(logits.detach())
        pos = labels < self.num_classes
        obj_labels = (labels == self.num_classes).long()
        return {
            "acc_objectness": _top1(objectness, obj_labels),
            "acc_classes": _top1(classes[pos], labels[pos]),
        }


def _top1(logits: Tensor, labels: Tensor) -> Tensor:
    """mmdet's ``accuracy(pred, target)`` with topk=1: percent correct, 0 for an empty batch."""
    if logits.shape[0] == 0:
        return logits.new_tensor(0.0)
    return (logits.argmax(dim=1) == labels).float().sum() * (100.0 / logits.shape[0])
