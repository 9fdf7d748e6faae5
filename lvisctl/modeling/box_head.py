"""Box branch: RoI features -> two fc layers -> (class logits, class-specific box deltas).

Seam: the classifier's width comes from the classification loss (``cls_loss.num_logits``) and its bias
init from ``cls_loss.init_classifier``, so softmax CE, sigmoid BCE, EQL and Balanced GroupSoftmax
(``lvisctl/losses/group_softmax.py``) share this head unchanged. Box deltas stay class-specific over
K + 1 slots (torchvision layout) so ``labels`` index them directly whatever the classifier; with
``class_agnostic`` (the cascade stages of mmdet's HTC config) one box per RoI, 4 outputs.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from lvisctl.losses.classification import ClassificationLoss


class BoxPredictor(nn.Module):
    def __init__(
        self, in_dim: int, num_classes: int, cls_loss: ClassificationLoss, class_agnostic: bool = False
    ) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_dim, cls_loss.num_logits)
        self.bbox_pred = nn.Linear(in_dim, 4 if class_agnostic else (num_classes + 1) * 4)
        cls_loss.init_classifier(self.cls_score)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class BoxHead(nn.Module):
    """``TwoMLPHead`` (fc-relu-fc-relu, torchvision) + ``BoxPredictor``."""

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        fc_dim: int,
        num_classes: int,
        cls_loss: ClassificationLoss,
        class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        self.mlp = TwoMLPHead(in_channels * resolution**2, fc_dim)
        self.predictor = BoxPredictor(fc_dim, num_classes, cls_loss, class_agnostic)

    def forward(self, roi_features: Tensor) -> tuple[Tensor, Tensor]:
        return self.predictor(self.mlp(roi_features))
