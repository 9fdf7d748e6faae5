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
* ``init_classifier(linear)``: set the classifier's initial bias (sigmoid losses start at a small prior);
* ``classifier(in_dim)``: the box head's classifier layer before ``init_classifier`` (an ``nn.Linear`` of
  ``num_logits`` outputs, so the state-dict keys are ``cls_score.weight`` / ``.bias`` whatever the loss).

Plug-in contract: a loss registers itself in ``lvisctl.registry.CLS_LOSSES`` under the name that
``model.roi_heads.cls_loss`` picks, and builds itself with ``from_config(rcfg, stats)`` (``rcfg`` =
``cfg.model.roi_heads``, ``stats`` = the training set's ``CategoryStats``). The default ``from_config``
passes ``stats.num_classes`` and the free mapping ``model.roi_heads.cls_loss_args`` (mmdet's
``loss_cls=dict(type=..., p=0.8)``) as keyword arguments; ``check_args`` refuses, at config load, names that
are not keyword arguments with a default of the constructor (``data_args``: filled from the data;
``config_args``: filled from their own config keys).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.registry import CLS_LOSSES

ARGS_KEY = "model.roi_heads.cls_loss_args"


def loss_args(rcfg: Any) -> dict[str, Any]:
    """``model.roi_heads.cls_loss_args`` as keyword arguments ({} where a saved config predates the key)."""
    return dict(getattr(rcfg, "cls_loss_args", None) or {})


def _kind_ok(default: Any, value: Any) -> bool:
    """A value of the kind of the constructor's default (numbers for numbers; bools only for bools)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int)
    return default is None or isinstance(value, type(default))


class NormedLinear(nn.Linear):
    """mmdet's ``NormedLinear`` (``mmdet/models/layers/normed_predictor.py``; power 1, eps 1e-6): cosine
    similarity of the input and each weight row times ``temperature``, plus the (unscaled) bias. mmdet's
    Seesaw LVIS configs use it as the classifier (``cls_predictor_cfg=dict(type='NormedLinear',
    tempearture=20)``). Same parameters as ``nn.Linear``, so the state-dict keys do not change."""

    def __init__(self, in_features: int, out_features: int, temperature: float, eps: float = 1e-6) -> None:
        super().__init__(in_features, out_features)
        self.temperature, self.eps = float(temperature), float(eps)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.eps)
        x = x / (x.norm(dim=1, keepdim=True) + self.eps) * self.temperature
        return F.linear(x, weight, self.bias)


class ClassificationLoss(nn.Module):
    # constructor arguments ``from_config`` fills from the training data / from their own config keys
    data_args: tuple[str, ...] = ("num_classes",)
    config_args: Mapping[str, str] = {}

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, rcfg: Any, stats: Any) -> ClassificationLoss:
        """The loss of ``model.roi_heads`` (``rcfg``) for the training classes (``stats``)."""
        return cls(stats.num_classes, **loss_args(rcfg))

    @classmethod
    def settable_args(cls) -> dict[str, Any]:
        """name -> default of the constructor arguments ``cls_loss_args`` may set."""
        params = inspect.signature(cls.__init__).parameters.values()
        skip = {*cls.data_args, *cls.config_args}
        return {
            p.name: p.default
            for p in params
            if p.default is not inspect.Parameter.empty and p.name not in skip and p.kind != p.VAR_KEYWORD
        }

    @classmethod
    def check_args(cls, args: Mapping[str, Any], name: str = "this loss") -> str | None:
        """The one-line problem of ``cls_loss_args`` for the loss ``name`` (unknown name, wrong kind)."""
        allowed = cls.settable_args()
        for arg, value in args.items():
            if arg in cls.config_args:
                return f"{arg} of cls_loss {name} is set by {cls.config_args[arg]}, not here"
            if arg not in allowed:
                known = ", ".join(allowed) or "none"
                return f"unknown argument {arg!r} for cls_loss {name} (it takes: {known})"
            if not _kind_ok(allowed[arg], value):
                return f"{arg} of cls_loss {name} must be like its default {allowed[arg]!r}, got {value!r}"
        return None

    def classifier(self, in_dim: int) -> nn.Linear:
        """The box head's classification layer (the head calls ``init_classifier`` on it afterwards, in the
        order of the random draws that older checkpoints and the demo's numbers were made with)."""
        return nn.Linear(in_dim, self.num_logits)

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


@CLS_LOSSES.register("softmax", help="softmax cross-entropy")
class SoftmaxCELoss(ClassificationLoss):
    """Standard Mask R-CNN classifier: softmax over K + 1 logits, cross-entropy."""

    @property
    def num_logits(self) -> int:
        return self.num_classes + 1

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        return weighted_mean(F.cross_entropy(logits.float(), labels, reduction="none"), weights)

    def scores(self, logits: Tensor) -> Tensor:
        return F.softmax(logits.float(), dim=-1)[:, 1:]


@CLS_LOSSES.register("sigmoid", help="per-class sigmoid binary cross-entropy")
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
