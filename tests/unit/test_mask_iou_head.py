"""Mask Scoring: MaskIoU head shapes, IoU targets by hand, L2 loss on positives, score combination."""

import pytest
import torch

from lvisctl.losses.mask_scoring import mask_iou_loss, mask_iou_targets
from lvisctl.modeling.mask_iou_head import MaskIoUHead, MaskScorer


def test_head_shapes_and_gradients():
    torch.manual_seed(0)
    head = MaskIoUHead(in_channels=8, num_classes=5, roi_size=14, conv_channels=8, fc_channels=16)
    feats = torch.randn(3, 8, 14, 14, requires_grad=True)
    logits = torch.randn(3, 28, 28, requires_grad=True)
    out = head(feats, logits)
    assert out.shape == (3, 5)
    assert len([m for m in head.convs if isinstance(m, torch.nn.Conv2d)]) == 4
    assert len([m for m in head.fcs if isinstance(m, torch.nn.Linear)]) + 1 == 3
    out.sum().backward()
    assert logits.grad.abs().sum() > 0 and feats.grad.abs().sum() > 0
    assert head(feats[:0], logits[:0]).shape == (0, 5)


def test_iou_targets_by_hand():
    probs = torch.zeros(3, 4, 4)
    targets = torch.zeros(3, 4, 4)
    probs[0, :2, :2] = 0.9  # 4 px predicted
    targets[0, :2, :3] = 1.0  # 6 px target, overlap 4 -> IoU 4 / 6
    probs[1, :, :] = 0.5  # exactly 0.5 is not foreground -> empty prediction
    targets[1, 0, 0] = 0.7  # soft target >= 0.5 counts -> IoU 0
    targets[2, 3, 3] = 0.4  # both empty -> 0
    iou = mask_iou_targets(probs, targets)
    assert iou.tolist() == pytest.approx([4 / 6, 0.0, 0.0])
    # with half of instance 0 outside its RoI, the whole-instance area is 12: IoU = 4 / (4 + 12 - 4)
    iou = mask_iou_targets(probs[:1], targets[:1], inside_ratio=torch.tensor([0.5]))
    assert iou.tolist() == pytest.approx([4 / 12], rel=1e-5)


def test_loss_uses_gt_class_column_and_positive_targets_only():
    pred = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.7], [0.3, 0.3, 0.3]], requires_grad=True)
    labels = torch.tensor([1, 2, 0])
    targets = torch.tensor([0.5, 0.6, 0.0])  # RoI 2 has target 0 -> left out
    loss = mask_iou_loss(pred, labels, targets)
    expected = 0.5 * ((0.9 - 0.5) ** 2 + (0.7 - 0.6) ** 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert pred.grad[2].abs().sum() == 0 and pred.grad[0, 1] != 0
    zero = mask_iou_loss(pred, labels, torch.zeros(3))
    assert zero.item() == 0.0 and zero.requires_grad


def test_mask_score_is_cls_score_times_predicted_iou():
    cls = torch.tensor([0.8, 0.5])
    pred = torch.tensor([[0.1, 0.6, 0.2], [0.9, 0.3, 0.4]])
    labels = torch.tensor([1, 2])
    iou = pred[torch.arange(2), labels]  # each detection's class column
    assert MaskScorer.rescore(cls, iou).tolist() == pytest.approx([0.48, 0.2])
