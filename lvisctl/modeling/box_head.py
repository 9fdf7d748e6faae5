"""Box branch: RoI features -> two fc layers -> (class logits, class-specific box deltas).

Seam: the classifier layer comes from the classification loss (``cls_loss.classifier(in_dim)``: its width
``num_logits``, its init, and for Seesaw optionally mmdet's normalised linear layer), so every registered loss
(``lvisctl.registry.CLS_LOSSES``: softmax CE, sigmoid BCE, EQL, BAGS, Seesaw, EQLv2, federated) shares this
head unchanged. Box deltas stay class-specific over
K + 1 slots (torchvision layout) so ``labels`` index them directly whatever the classifier; with
``class_agnostic`` (the cascade stages of mmdet's HTC config) one box per RoI, 4 outputs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from lvisctl.losses.classification import ClassificationLoss


class BoxPredictor(nn.Module):
    def __init__(
        self, in_dim: int, num_classes: int, cls_loss: ClassificationLoss, class_agnostic: bool = False
    ) -> None:
        super().__init__()
        self.cls_score = cls_loss.classifier(in_dim)
        self.bbox_pred = nn.Linear(in_dim, 4 if class_agnostic else (num_classes + 1) * 4)
        cls_loss.init_classifier(self.cls_score)  # after bbox_pred: the random draws in their old order
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class ConvFCHead(nn.Module):
    """``num_convs`` 3x3 conv-relu layers, then one fc-relu: torchvision v2's / detectron2's "4conv1fc" box
    head (their BatchNorm folded into the conv biases, which is exact in eval mode)."""

    def __init__(self, in_channels: int, resolution: int, num_convs: int, conv_dim: int, fc_dim: int) -> None:
        super().__init__()
        chans = [in_channels] + [conv_dim] * num_convs
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.fc = nn.Linear(chans[-1] * resolution**2, fc_dim)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.relu(self.fc(x.flatten(1)))


class BoxHead(nn.Module):
    """``TwoMLPHead`` (fc-relu-fc-relu, torchvision) or, with ``num_convs`` > 0, ``ConvFCHead``; then
    ``BoxPredictor``."""

    def __init__(
        self,
        in_channels: int,
        resolution: int,
        fc_dim: int,
        num_classes: int,
        cls_loss: ClassificationLoss,
        class_agnostic: bool = False,
        num_convs: int = 0,
    ) -> None:
        super().__init__()
        self.mlp = (
            ConvFCHead(in_channels, resolution, num_convs, in_channels, fc_dim)
            if num_convs
            else TwoMLPHead(in_channels * resolution**2, fc_dim)
        )
        self.predictor = BoxPredictor(fc_dim, num_classes, cls_loss, class_agnostic)

    def forward(self, roi_features: Tensor) -> tuple[Tensor, Tensor]:
        return self.predictor(self.mlp(roi_features))
