"""RPN anchors and ignore regions (mmdet's gt_bboxes_ignore semantics), on a hand-made anchor set."""

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead

from lvisctl.modeling.rpn import WeightedRPN, ignore_anchor_labels, intersection_over_anchor

ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # inside the ignore box: IoF 1
        [15.0, 15.0, 25.0, 25.0],  # corner overlap 5x5 = 25 of 100: IoF 0.25
        [10.0, 0.0, 30.0, 10.0],  # half inside: 100 of 200 = 0.5 (IoU with the box only 100/500 = 0.2)
        [50.0, 50.0, 60.0, 60.0],  # far away, on the ground-truth box
    ]
)
IGNORE = torch.tensor([[0.0, 0.0, 20.0, 20.0]])


def _rpn() -> WeightedRPN:
    return WeightedRPN(
        AnchorGenerator(((8,),), ((1.0,),)),
        RPNHead(4, 1),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 100, "testing": 100},
        post_nms_top_n={"training": 50, "testing": 50},
        nms_thresh=0.7,
    )


def test_intersection_over_anchor_by_hand():
    iof = intersection_over_anchor(ANCHORS, IGNORE).flatten()
    assert iof.tolist() == [1.0, 0.25, 0.5, 0.0]


def test_anchors_on_ignore_boxes_are_neither_positive_nor_negative():
    rpn = _rpn()
    gt = torch.tensor([[50.0, 50.0, 60.0, 60.0]])
    plain, _ = rpn.assign_targets_to_anchors([ANCHORS], [{"boxes": gt}])
    assert plain[0].tolist() == [0.0, 0.0, 0.0, 1.0]
    labels, matched = rpn.assign_targets_to_anchors([ANCHORS], [{"boxes": gt, "ignore_boxes": IGNORE}])
    assert labels[0].tolist() == [-1.0, 0.0, -1.0, 1.0]  # IoF >= 0.5 ignored; 0.25 stays negative
    assert torch.equal(matched[0][3], gt[0])
    # mmdet ignores a would-be positive too; and an image without ground truth keeps its ignore regions
    pos, _ = rpn.assign_targets_to_anchors([ANCHORS], [{"boxes": ANCHORS[:1], "ignore_boxes": IGNORE}])
    assert pos[0].tolist() == [-1.0, 0.0, -1.0, 0.0]
    empty, _ = rpn.assign_targets_to_anchors(
        [ANCHORS], [{"boxes": torch.zeros(0, 4), "ignore_boxes": IGNORE}]
    )
    assert empty[0].tolist() == [-1.0, 0.0, -1.0, 0.0]
    # the sampler never draws an ignored anchor
    pos_idx, neg_idx = rpn.fg_bg_sampler(labels)
    assert torch.nonzero(pos_idx[0]).flatten().tolist() == [3]
    assert torch.nonzero(neg_idx[0]).flatten().tolist() == [1]
    # a stricter threshold ignores only the anchor fully inside
    assert ignore_anchor_labels(plain[0], ANCHORS, IGNORE, 0.9).tolist() == [-1.0, 0.0, 0.0, 1.0]


def test_training_forward_drops_ignored_anchors_from_the_loss():
    """64 anchors of 8 px at stride 8 on a 64 px image: ``[8x-4, 8y-4, 8x+4, 8y+4]``. The ignore box
    [0, 0, 32, 32] covers x, y in 1..3 fully (9 anchors, IoF 1) and x or y in {0, 4} half (12 anchors with
    the other coordinate in 1..3: IoF 0.5; the 4 corners 0.25): 21 ignored. The ground truth [40, 40, 56,
    56] gets its best anchor (6, 6) as the one positive (low-quality match); all 64 anchors are sampled."""
    torch.manual_seed(0)
    rpn = _rpn().train()
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = {"0": torch.randn(1, 4, 8, 8)}
    gt = {"boxes": torch.tensor([[40.0, 40.0, 56.0, 56.0]])}
    with_ignore = {**gt, "ignore_boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]])}
    _, plain = rpn(images, features, [gt])
    _, ignored = rpn(images, features, [with_ignore])
    with torch.no_grad():
        anchors = rpn.anchor_generator(images, list(features.values()))
        labels = rpn.assign_targets_to_anchors(anchors, [with_ignore])[0][0]
        logits = rpn.head(list(features.values()))[0][0].flatten()  # one anchor per position, row-major
    assert int((labels == -1).sum()) == 21 and int((labels == 1).sum()) == 1
    assert labels.view(8, 8)[6, 6] == 1 and labels.view(8, 8)[2, 2] == -1 and labels.view(8, 8)[0, 0] == 0
    keep = labels >= 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], labels[keep])
    assert torch.allclose(ignored["loss_objectness"], expected)
    # the box loss of the one positive is normalised by the sampled anchors: 64 without, 43 with
    assert torch.allclose(ignored["loss_rpn_box_reg"] * 43, plain["loss_rpn_box_reg"] * 64)


def test_ignore_threshold_is_the_config_key():
    """model.rpn.ignore_iof_thresh (lvisctl's addition; 0.5 = mmdet's ignore_iof_thr) reaches the RPN."""
    import pytest

    from lvisctl.config import load_config
    from lvisctl.errors import LvisctlError
    from lvisctl.modeling import build_model
    from tests.helpers.model import TINY, make_stats

    assert load_config(None).model.rpn.ignore_iof_thresh == 0.5
    model = build_model(load_config(None, [*TINY, "model.rpn.ignore_iof_thresh=0.8"]), make_stats())
    assert model.rpn.ignore_iof_thresh == 0.8
    # an anchor half inside an ignore box: ignored at 0.5, kept as a negative at 0.8
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    ignore = torch.tensor([[5.0, 0, 30, 30]])
    labels = torch.zeros(1)
    assert ignore_anchor_labels(labels, anchors, ignore, 0.5).tolist() == [-1.0]
    assert ignore_anchor_labels(labels, anchors, ignore, model.rpn.ignore_iof_thresh).tolist() == [0.0]
    with pytest.raises(LvisctlError, match=r"model.rpn.ignore_iof_thresh must be in \(0, 1\]"):
        load_config(None, ["model.rpn.ignore_iof_thresh=0"])
