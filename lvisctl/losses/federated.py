"""Federated loss (Zhou et al. 2021, "Probabilistic two-stage detection"), as detectron2.

Follows detectron2's ``FastRCNNOutputLayers`` with ``use_fed_loss=True`` (``modeling/roi_heads/fast_rcnn.py``:
``get_fed_loss_classes`` and ``sigmoid_cross_entropy_loss``; weights from ``data/detection_utils.py``
``get_fed_loss_cls_weights``; defaults ``FED_LOSS_NUM_CLASSES = 50``, ``FED_LOSS_FREQ_WEIGHT_POWER = 0.5``):

* class weights w_j = image_count_j ** 0.5 (the training json's ``image_count``);
* per batch the "federated" classes are the unique ground-truth labels of the proposals (detectron2 counts
  the background label among them) plus, while fewer than ``num_fed_classes``, classes drawn without
  replacement with probability proportional to w_j among the classes not already present;
* loss = sum over proposals and the federated foreground classes of sigmoid BCE, divided by the number
  of proposals (lvisctl's weighted mean; the plain mean with no per-proposal weights).

Test-time activation: sigmoid per class. Classifier init as detectron2: weight ~ N(0, 0.01), bias 0.
detectron2's classifier has a K + 1-th (background) column that this loss never trains and inference
drops; it is left out here (K outputs).

Differences from detectron2, for reproducibility and small data sets:

* the draw uses a CPU ``torch.Generator`` seeded from the run's seed instead of the global RNG, and its
  state is the persistent buffer ``generator_state`` (saved in checkpoints), so a resumed run draws the same
  classes as an uninterrupted one. Under DDP, whose default ``broadcast_buffers`` copies rank 0's buffers to
  every rank before each forward, all ranks draw from rank 0's state (each for its own batch's classes), and
  the checkpoint's state is the one every rank restarts from;
* when fewer classes with a non-zero weight are left than are asked for, all of them are taken
  (detectron2's ``torch.multinomial`` would raise; on LVIS's 1,203 classes this never happens).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvisctl.losses.classification import ClassificationLoss, SigmoidBCELoss, loss_args, weighted_mean
from lvisctl.registry import CLS_LOSSES

FED_LOSS_NUM_CLASSES = 50
FED_LOSS_FREQ_WEIGHT_POWER = 0.5


def fed_loss_weights(image_count: np.ndarray | Tensor, power: float = FED_LOSS_FREQ_WEIGHT_POWER) -> Tensor:
    """detectron2's ``get_fed_loss_cls_weights``: image_count (in category-id order) ** power, float32."""
    counts = torch.as_tensor(np.asarray(image_count, dtype=np.int64))
    return counts.float() ** power


@CLS_LOSSES.register(
    "federated", help="federated loss: sigmoid BCE on the batch's + sampled classes (detectron2)"
)
class FederatedLoss(SigmoidBCELoss):
    data_args = ("image_count",)

    @classmethod
    def from_config(cls, rcfg: Any, stats: Any) -> FederatedLoss:
        # The run's seed: the trainer (and the importer) seed torch with ``seed`` right before they build the
        # model, so torch.initial_seed() is it; cls_loss_args may set another.
        return cls(stats.image_count, **{"seed": torch.initial_seed(), **loss_args(rcfg)})

    def __init__(
        self,
        image_count: np.ndarray | Tensor,
        num_fed_classes: int = FED_LOSS_NUM_CLASSES,
        freq_weight_power: float = FED_LOSS_FREQ_WEIGHT_POWER,
        seed: int = 0,
    ) -> None:
        weights = fed_loss_weights(image_count, freq_weight_power)
        super().__init__(num_classes=int(weights.numel()))
        self.num_fed_classes = int(num_fed_classes)
        # Derived from the annotation file, so not saved (as EQL's tail mask).
        self.register_buffer("fed_weights", weights, persistent=False)
        # The draw's generator state lives in a persistent uint8 buffer (the single source of truth): it is
        # saved with the model as a plain tensor (weights_only loads, shape-matched init) and resume draws
        # exactly what an uninterrupted run would.
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(seed))
        self.register_buffer("generator_state", generator.get_state())

    def init_classifier(self, linear: nn.Linear) -> None:
        # detectron2's FastRCNNOutputLayers: weight ~ N(0, 0.01), bias 0, also with sigmoid CE / federated
        # loss (unlike the RetinaNet prior of lvisctl's plain sigmoid baseline).
        ClassificationLoss.init_classifier(self, linear)

    def fed_classes(self, labels: Tensor) -> Tensor:
        """detectron2's ``get_fed_loss_classes`` on its indices (class l -> l - 1, background -> K)."""
        k = self.num_classes
        gt = torch.where(labels == 0, torch.full_like(labels, k), labels - 1)
        unique = torch.unique(gt)
        if len(unique) >= self.num_fed_classes:
            return unique
        prob = torch.zeros(k + 1)
        prob[:k] = self.fed_weights.detach().cpu()
        prob[unique.cpu()] = 0
        wanted = min(self.num_fed_classes - len(unique), int((prob > 0).sum()))
        if wanted == 0:
            return unique
        return torch.cat([unique, self.draw(prob, wanted).to(unique.device)])

    def draw(self, prob: Tensor, count: int) -> Tensor:
        """``count`` classes without replacement, P ~ ``prob``, from the saved generator state."""
        generator = torch.Generator(device="cpu")
        generator.set_state(self.generator_state.cpu())
        sampled = torch.multinomial(prob, count, replacement=False, generator=generator)
        self.generator_state.copy_(generator.get_state())
        return sampled

    def class_mask(self, labels: Tensor) -> Tensor:
        """[K] 1.0 for the federated foreground classes of this batch."""
        mask = torch.zeros(self.num_classes + 1, device=labels.device)
        mask[self.fed_classes(labels)] = 1.0
        return mask[: self.num_classes]

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        if logits.numel() == 0:
            return logits.sum()  # detectron2 returns 0 for no proposals (and draws nothing)
        target = self.targets(logits, labels)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        return weighted_mean((bce * self.class_mask(labels)[None, :]).sum(dim=1), weights)

    def forward(self, cls_score: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        return self.loss(cls_score, labels, weights)
