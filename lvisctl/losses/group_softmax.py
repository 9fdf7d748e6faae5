"""Balanced GroupSoftmax (BAGS; Li et al., "Overcoming Classifier Imbalance for Long-tail Object Detection
with Balanced Group Softmax", CVPR 2020), the classifier-balancing step of lvisTraveler's stage 2.

What is taken from where (reference code: FishYuLi/BalancedGroupSoftmax ``tools/lvis_analyse.py`` and
``mmdet/models/bbox_heads/gs_bbox_head_with0.py``; tztztztztz/eqlv2 ``mmdet/models/losses/group_softmax.py``):

* Bins: classes are grouped by training instance count with edges (10, 100, 1000), lower edge inclusive,
  upper exclusive: [0, 10), [10, 100), [100, 1000), [1000, inf) -- ``if ins_count < 10 ... elif < 100 ...
  elif < 1000 ... else`` in lvis_analyse.py, ``bisect_right(bin_split, count)`` in eqlv2. A class with 0
  training instances lands in the first group. Groups without any class are dropped here (the original
  keeps a one-logit group that can never be trained).
* Background is its own group with two logits (background, foreground): every foreground class maps to
  "foreground" there (``label2binlabel[0, 1:] = 1`` in the original, whose background group comes first
  as here; eqlv2 puts it last). All RoIs are used in the background group's softmax.
* Each foreground group has an "others" logit at position 0 followed by its classes in index order; a RoI
  whose class is not in the group (background included) has label "others" there.
* Others sampling (``_sample_others``, ``others_sample_ratio`` 8.0 in the BAGS configs, ``beta=8`` in eqlv2):
  in a foreground group with n RoIs of its own classes, int(8 n) of the "others" RoIs are drawn uniformly
  without replacement (all of them if fewer); with n = 0 the group contributes nothing. Each group's
  cross-entropy is summed over the selected RoIs and divided by their number (``avg_factor``), and the
  group losses are summed.
* Test time (``_merge_score`` in gs_bbox_head_with0.py, ``get_activation`` in eqlv2): softmax inside each
  group; P(class c) = P(c | its group softmax) * P(foreground | background group); P(background) is the
  background group's background probability. The result is not renormalised (as in the original).

Logit layout (``num_logits = K + 1 + number of groups``, background group included):
``[bg, fg | others_1, classes of group 1 | others_2, classes of group 2 | ...]``.

How it plugs in: the model core's classification-loss seam. The box predictor's class layer must have
``num_logits`` outputs (``model.roi_heads.cls_loss: bags``); training calls
``loss(logits, labels, weights)`` with contiguous labels (0 = background, 1..K); inference calls
``scores(logits)`` -> N x K foreground scores (``probabilities(logits)`` gives N x (K + 1) with the
background column). It is a ``lvisctl.losses.classification.ClassificationLoss`` (the core's interface;
classifier init: the default N(0, 0.01), zero bias, as mmdet's ``fc_cls`` in BAGS). ``build_model`` builds
``BalancedGroupSoftmax(category_stats.instance_count, model.roi_heads.bags_bin_edges,
model.roi_heads.bags_others_ratio)`` (config defaults [10, 100, 1000] and 8.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lvisctl.errors import LvisctlError
from lvisctl.losses.classification import ClassificationLoss, loss_args
from lvisctl.registry import CLS_LOSSES

BIN_EDGES = (10, 100, 1000)
OTHERS_RATIO = 8.0


def group_of_counts(
    instance_count: Sequence[int] | np.ndarray, bin_edges: Sequence[int] = BIN_EDGES
) -> np.ndarray:
    """0-based count bin of each class: [0, e0) -> 0, [e0, e1) -> 1, ... (lower edges inclusive)."""
    return np.searchsorted(np.asarray(bin_edges), np.asarray(instance_count), side="right")


def checked_bin_edges(edges: Sequence[Any]) -> list[int]:
    """``model.roi_heads.bags_bin_edges``: strictly increasing positive instance counts."""
    if not edges or not all(isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in edges):
        raise LvisctlError(f"model.roi_heads.bags_bin_edges: need positive integer counts, got {list(edges)}")
    if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
        raise LvisctlError(f"model.roi_heads.bags_bin_edges: must increase strictly, got {list(edges)}")
    return [int(e) for e in edges]


@CLS_LOSSES.register("bags", help="Balanced GroupSoftmax (Table 2's GS)")
class BalancedGroupSoftmax(ClassificationLoss):
    """Group-wise softmax cross-entropy with "others" sampling, and the matching score function."""

    data_args = ("instance_count",)
    config_args = {
        "bin_edges": "model.roi_heads.bags_bin_edges",
        "others_ratio": "model.roi_heads.bags_others_ratio",
    }

    @classmethod
    def from_config(cls, rcfg: Any, stats: Any) -> BalancedGroupSoftmax:
        edges = checked_bin_edges(list(rcfg.bags_bin_edges))
        return cls(stats.instance_count, edges, float(rcfg.bags_others_ratio), **loss_args(rcfg))

    def __init__(
        self,
        instance_count: Sequence[int] | np.ndarray,
        bin_edges: Sequence[int] = BIN_EDGES,
        others_ratio: float = OTHERS_RATIO,
    ) -> None:
        counts = np.asarray(instance_count, dtype=np.int64)
        if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
            raise ValueError("instance_count must be a non-empty 1-D array of non-negative counts")
        super().__init__(int(counts.size))
        self.others_ratio = float(others_ratio)
        bins = group_of_counts(counts, bin_edges)
        # group 0 = background group; foreground groups numbered 1.. in bin order, empty bins dropped
        self.group_classes: list[list[int]] = [
            [c + 1 for c in range(self.num_classes) if bins[c] == b] for b in range(len(bin_edges) + 1)
        ]
        self.group_classes = [cls for cls in self.group_classes if cls]
        sizes = [2] + [len(cls) + 1 for cls in self.group_classes]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.slices = [(int(s), int(n)) for s, n in zip(starts, sizes, strict=True)]
        self._num_logits = int(sum(sizes))

        label_maps = torch.zeros((len(sizes), self.num_classes + 1), dtype=torch.long)
        label_maps[0, 1:] = 1  # background group: 0 = background, 1 = foreground
        class_column = torch.zeros(self.num_classes + 1, dtype=torch.long)
        for g, classes in enumerate(self.group_classes, start=1):
            positions = torch.arange(1, len(classes) + 1)
            label_maps[g, classes] = positions
            class_column[classes] = self.slices[g][0] + positions
        self.register_buffer("label_maps", label_maps, persistent=False)
        self.register_buffer("class_column", class_column, persistent=False)

    @property
    def num_logits(self) -> int:
        """Width of the box predictor's classifier: K + 1 + number of groups (background group included)."""
        return self._num_logits

    @property
    def num_groups(self) -> int:
        """Number of softmax groups, the background group included."""
        return len(self.slices)

    def group_labels(self, labels: Tensor) -> list[Tensor]:
        """Label of each RoI inside each group (0 = background / "others")."""
        # .to(): the core may keep this loss as a plain attribute that module.to(device) does not move
        label_maps = self.label_maps.to(labels.device)
        return [label_maps[g][labels] for g in range(self.num_groups)]

    # None: the sync-free sampling on CUDA, the host-side one (the CPU's exact RNG stream) elsewhere
    sync_free: bool | None = None

    def _device_path(self, t: Tensor) -> bool:
        return t.is_cuda if self.sync_free is None else self.sync_free

    def _sample_others(self, group_labels: Tensor, valid: Tensor) -> Tensor:
        """0/1 float selection of the RoIs that enter a foreground group's loss."""
        if self._device_path(group_labels):
            return self._sample_others_on_device(group_labels, valid)
        own = (group_labels > 0) & valid
        num_own = int(own.sum())
        if num_own == 0:
            return torch.zeros_like(group_labels, dtype=torch.float32)
        others = ((group_labels == 0) & valid).nonzero(as_tuple=True)[0]
        num_sample = int(num_own * self.others_ratio)
        selected = own.clone()
        if num_sample >= others.numel():
            selected[others] = True
        else:
            pick = torch.randperm(others.numel(), device=others.device)[:num_sample]
            selected[others[pick]] = True
        return selected.float()

    def _sample_others_on_device(self, group_labels: Tensor, valid: Tensor) -> Tensor:
        """The same rule without reading a count on the host (3 syncs per group, ~13 per box loss with
        LVIS's groups, x3 with HTC): int(n_own * ratio) "others" drawn uniformly without replacement as
        the smallest of random keys; none when the group has no RoI of its own."""
        own = (group_labels > 0) & valid
        others = (group_labels == 0) & valid
        num_own = own.sum()
        num_sample = torch.floor(num_own.double() * self.others_ratio)
        keys = torch.where(others, torch.rand(group_labels.shape, device=group_labels.device), 2.0)
        rank = torch.empty_like(group_labels)
        rank[keys.argsort()] = torch.arange(group_labels.numel(), device=group_labels.device)
        selected = (own | (others & (rank < num_sample))) & (num_own > 0)
        return selected.float()

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Sum over groups of the mean cross-entropy over each group's selected RoIs.

        ``logits`` N x num_logits, ``labels`` N contiguous labels (0 = background). ``weights`` (optional,
        N) scales each RoI's loss; RoIs with weight 0 (e.g. ignored proposals) are left out of the others
        sampling and of the averaging.
        """
        if logits.shape[-1] != self.num_logits:
            raise ValueError(f"expected {self.num_logits} logits per RoI, got {logits.shape[-1]}")
        labels = labels.long()
        valid = torch.ones_like(labels, dtype=torch.bool) if weights is None else weights > 0
        total = logits.sum() * 0.0
        for g, ((start, length), group_labels) in enumerate(
            zip(self.slices, self.group_labels(labels), strict=True)
        ):
            selected = valid.float() if g == 0 else self._sample_others(group_labels, valid)
            roi_weights = selected if weights is None else selected * weights.to(selected)
            ce = F.cross_entropy(logits[:, start : start + length].float(), group_labels, reduction="none")
            count = (
                selected.sum().clamp_min(1.0) if self._device_path(ce) else max(float(selected.sum()), 1.0)
            )
            total = total + (ce * roi_weights).sum() / count
        return total

    forward = loss

    def probabilities(self, logits: Tensor) -> Tensor:
        """N x (K + 1): column 0 = P(background), column c = P(c | its group) * P(foreground)."""
        probs = torch.cat([F.softmax(logits[:, s : s + n].float(), dim=1) for s, n in self.slices], dim=1)
        foreground = probs[:, 1:2]
        out = probs[:, self.class_column.to(probs.device)] * foreground
        out[:, 0] = probs[:, 0]
        return out

    def scores(self, logits: Tensor) -> Tensor:
        """N x K foreground class scores for detection post-processing (``probabilities`` minus column 0)."""
        return self.probabilities(logits)[:, 1:]
