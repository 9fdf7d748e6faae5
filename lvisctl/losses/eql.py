"""Equalization Loss (Tan et al., CVPR 2020, "Equalization Loss for Long-Tailed Object Recognition").

A sigmoid classifier whose per-class BCE terms are weighted by (paper Eq. 7)

    w_j = 1 - E(r) * T_lambda(f_j) * (1 - y_j)

* ``E(r)`` = 1 when proposal r is foreground (matched to any GT class), 0 for background proposals;
* ``T_lambda(f_j)`` = 1 when class j is a tail class, i.e. its frequency f_j < lambda;
* ``y_j`` = 1 for the proposal's own class.

So the *negative* gradients that foreground proposals of other classes send to tail classes are dropped,
while background proposals (E = 0) still suppress every class, and a tail class's own positives train it.

Frequency source: f_j is the **image frequency** of class j in the training set, image_count / num_images
(``CategoryStats.image_frequency``), as in the authors' code (eqlv2 repo, ``get_image_count_frequency``).
lambda = 1.76e-3 is the paper's value for LVIS (it makes roughly the rare + common classes "tail"; the
eqlv2 repo's ``eql.py`` uses 0.00177). The loss is summed over classes and divided by the number of
(non-ignored) proposals, as in that code.

Classifier bias: every class starts at probability 0.001 ("roughly 1 / num_classes", eql.detectron2's
``EQLFastRCNNOutputLayers``), not the RetinaNet 0.01 of the plain sigmoid baseline: with 1,203 classes a
background proposal's first loss is then 1203 * -log(0.999) = 1.2 instead of 12.1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lvisctl.losses.classification import SigmoidBCELoss, loss_args
from lvisctl.registry import CLS_LOSSES

EQL_LAMBDA = 1.76e-3


@CLS_LOSSES.register("eql", help="Equalization Loss (Table 1's EQL)")
class EqualizationLoss(SigmoidBCELoss):
    prior_prob = 1e-3  # eql.detectron2's initial class probability (see the module docstring)
    data_args = ("image_frequency",)
    config_args = {"lambda_": "model.roi_heads.eql_lambda"}

    @classmethod
    def from_config(cls, rcfg: Any, stats: Any) -> EqualizationLoss:
        # the tail threshold keeps its own key (eql_lambda, older than cls_loss_args); f_j from the stats
        return cls(stats.image_frequency, float(rcfg.eql_lambda), **loss_args(rcfg))

    def __init__(self, image_frequency: np.ndarray | Tensor, lambda_: float = EQL_LAMBDA) -> None:
        freq = torch.as_tensor(np.asarray(image_frequency, dtype=np.float64), dtype=torch.float32)
        super().__init__(num_classes=int(freq.numel()))
        self.lambda_ = float(lambda_)
        # T_lambda(f_j): 1 for tail classes. A buffer so it moves with the model and is saved with it.
        self.register_buffer("tail", (freq < self.lambda_).float(), persistent=False)

    def class_weights(self, target: Tensor, labels: Tensor) -> Tensor:
        is_fg = (labels > 0).float()[:, None]  # E(r)
        return 1.0 - is_fg * self.tail[None, :] * (1.0 - target)
