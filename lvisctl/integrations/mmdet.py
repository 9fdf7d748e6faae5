"""lvisctl's long-tail losses and LVIS evaluator registered in mmdet 3.x's registries.

Import from an mmdet config (mmcv with its compiled ops is needed by mmdet's models)::

    custom_imports = dict(imports=["lvisctl.integrations.mmdet"], allow_failed_imports=False)
    model = dict(roi_head=dict(
        bbox_head=dict(loss_cls=dict(type="LvisctlEQLLoss", ann_file="data/lvis/lvis_v1_train.json")),
        mask_head=dict(loss_mask=dict(type="LvisctlBalancedMaskLoss"))))
    val_evaluator = dict(type="LvisctlLVISMetric", ann_file="data/lvis_v1/annotations/lvis_v1_val.json",
                         metric=["bbox", "segm"])

The losses wrap ``lvisctl.losses`` (nothing is re-implemented). The classification losses use mmdet's
``custom_cls_channels`` hook, so the classifier has lvisctl's logit layout (softmax: background first; EQL:
K sigmoid logits; BAGS: its group logits) and mmdet's labels (background = K) are mapped to lvisctl's
(background = 0). Class statistics (EQL's image frequency, BAGS's instance counts) come from the training
annotation file (``ann_file``) as ``lvisctl train`` computes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmdet.registry import METRICS, MODELS
from mmengine.evaluator import BaseMetric
from torch import Tensor, nn

from lvisctl.integrations.lvis_eval import evaluate_records, image_records
from lvisctl.losses.balanced_mask import balanced_mask_loss
from lvisctl.losses.boundary import boundary_loss
from lvisctl.losses.classification import ClassificationLoss
from lvisctl.losses.eql import EQL_LAMBDA, EqualizationLoss
from lvisctl.losses.group_softmax import BalancedGroupSoftmax


def _stats(ann_file: str):
    from lvisctl.data.lvis import load_lvis

    return load_lvis(ann_file).category_stats()


class _LvisctlClsLoss(nn.Module):
    """An lvisctl ``ClassificationLoss`` behind mmdet's ``loss_cls`` interface (custom channels)."""

    custom_cls_channels = True
    custom_activation = True
    custom_accuracy = True

    def __init__(self, inner: ClassificationLoss, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.inner = inner
        self.loss_weight = loss_weight

    def get_cls_channels(self, num_classes: int) -> int:
        if num_classes != self.inner.num_classes:
            raise ValueError(
                f"bbox_head.num_classes={num_classes}, the loss's annotations have {self.inner.num_classes}"
            )
        return self.inner.num_logits

    def _labels(self, labels: Tensor) -> Tensor:
        k = self.inner.num_classes
        return torch.where(labels >= k, torch.zeros_like(labels), labels + 1)  # mmdet bg = K -> lvisctl 0

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | None = None,
        reduction_override: str | None = None,
        **_: Any,
    ) -> Tensor:
        return self.loss_weight * self.inner.loss(cls_score, self._labels(labels), weight)

    def get_activation(self, cls_score: Tensor) -> Tensor:
        """Class probabilities in mmdet's layout: [N, K + 1], background last."""
        fg = self.inner.scores(cls_score)
        return torch.cat([fg, (1 - fg.sum(dim=1, keepdim=True)).clamp(min=0)], dim=1)

    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        probs = self.get_activation(cls_score)
        pred = torch.where(
            probs[:, :-1].max(dim=1).values >= probs[:, -1], probs[:, :-1].argmax(1), probs.shape[1] - 1
        )
        return {"acc_cls": (pred == labels).float().mean() * 100}


@MODELS.register_module()
class LvisctlEQLLoss(_LvisctlClsLoss):
    """Equalization loss (paper Eq. 7) with the image frequencies of ``ann_file``."""

    def __init__(
        self, ann_file: str, lambda_: float = EQL_LAMBDA, loss_weight: float = 1.0, **_: Any
    ) -> None:
        super().__init__(EqualizationLoss(_stats(ann_file).image_frequency, lambda_), loss_weight)


@MODELS.register_module()
class LvisctlBAGSLoss(_LvisctlClsLoss):
    """Balanced GroupSoftmax with the instance counts of ``ann_file`` (bins 10/100/1000, others ratio 8)."""

    def __init__(
        self,
        ann_file: str,
        bin_edges: Sequence[int] = (10, 100, 1000),
        others_ratio: float = 8.0,
        loss_weight: float = 1.0,
        **_: Any,
    ) -> None:
        inner = BalancedGroupSoftmax(_stats(ann_file).instance_count, list(bin_edges), others_ratio)
        super().__init__(inner, loss_weight)


def _class_logits(pred: Tensor, label: Tensor) -> Tensor:
    """mmdet's mask predictions [N, C, M, M] -> the logits of each RoI's class [N, M, M]."""
    if pred.shape[1] == 1:
        return pred[:, 0]
    return pred[torch.arange(pred.shape[0], device=pred.device), label]


@MODELS.register_module()
class LvisctlBalancedMaskLoss(nn.Module):
    """The paper's balanced mask loss (Dice + foreground-weighted BCE, Eq. 2-5) as ``loss_mask``.

    S_mask / S_bbox is the fraction of the RoI's target mask that is foreground (the target is cropped to
    the proposal box), as lvisctl's mask head computes it.
    """

    def __init__(self, lam: float = 1.0, eps: float = 1.0, loss_weight: float = 1.0, **_: Any) -> None:
        super().__init__()
        self.lam, self.eps, self.loss_weight = lam, eps, loss_weight

    def forward(self, pred: Tensor, target: Tensor, label: Tensor, **_: Any) -> Tensor:
        if target.numel() == 0:
            return pred.sum() * 0
        binary = (target >= 0.5).float()
        area_ratio = target.float().mean(dim=(1, 2))
        loss = balanced_mask_loss(_class_logits(pred, label), binary, area_ratio, lam=self.lam, eps=self.eps)
        return self.loss_weight * loss


@MODELS.register_module()
class LvisctlBoundaryLoss(nn.Module):
    """BMask R-CNN's boundary loss (BCE + Dice on Laplacian boundaries of the mask targets)."""

    def __init__(self, loss_weight: float = 1.0, **_: Any) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, label: Tensor, **_: Any) -> Tensor:
        if target.numel() == 0:
            return pred.sum() * 0
        return self.loss_weight * boundary_loss(_class_logits(pred, label), (target >= 0.5).float())


@METRICS.register_module()
class LvisctlLVISMetric(BaseMetric):
    """Drop-in for mmdet's ``LVISMetric`` (same ``ann_file`` / ``metric`` arguments and ``lvis/bbox_AP``
    style keys) computed by lvisctl's evaluator (hotcoco: lvis-api's numbers, several times faster)."""

    default_prefix = "lvis"

    def __init__(
        self,
        ann_file: str,
        metric: str | Sequence[str] = "bbox",
        collect_device: str = "cpu",
        prefix: str | None = None,
        **_: Any,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        import json

        self.ann_file = ann_file
        self.metrics = [metric] if isinstance(metric, str) else list(metric)
        for m in self.metrics:
            if m not in ("bbox", "segm"):
                raise KeyError(f"metric should be one of 'bbox', 'segm', got {m!r}")
        with open(ann_file, encoding="utf-8") as fh:
            self.cat_ids = sorted(int(c["id"]) for c in json.load(fh)["categories"])

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample["pred_instances"]
            masks = pred.get("masks") if "segm" in self.metrics else None
            # one copy of the labels to the host, not one sync per detection
            cats = [self.cat_ids[c] for c in torch.as_tensor(pred["labels"]).tolist()]
            # one entry per image: mmengine cuts the collected results to the dataset size
            self.results.append(image_records(sample["img_id"], pred["bboxes"], pred["scores"], cats, masks))

    def compute_metrics(self, results: list) -> dict[str, float]:
        records = [rec for per_image in results for rec in per_image]
        metrics = evaluate_records(records, self.ann_file, self.metrics)
        return {f"{t}_{k}": v for t, values in metrics.items() for k, v in values.items()}
