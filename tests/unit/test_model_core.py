"""The model core: build_model contract, preprocessing, seams, self-training hooks, backbones."""

import numpy as np
import pytest
import torch
import torchvision

from lvisctl.config import load_config
from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.losses.eql import EqualizationLoss
from lvisctl.modeling.backbones import DeformConv3x3, build_trunk
from lvisctl.modeling.build import build_mask_levels
from lvisctl.modeling.mask_assign import fpn_levels
from lvisctl.modeling.rpn import WeightedRPN
from lvisctl.modeling.sampling import ignore_overlaps, proposal_weights
from tests.helpers.model import IMAGES, K, target, tiny_model


def test_train_returns_finite_losses_and_backprops():
    model = tiny_model().train()
    losses = model(IMAGES, [target(64, 70), target(70, 64)])
    assert set(losses) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
    }
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.roi_heads.mask_head.predictor.weight.grad is not None


def test_eval_output_contract():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(IMAGES)
    assert len(out) == 2
    for res, (h, w) in zip(out, [(64, 70), (70, 64)], strict=True):
        n = res["boxes"].shape[0]
        assert 0 < n <= 300
        assert res["masks"].shape == (n, 1, h, w) and res["masks"].dtype == torch.float32
        assert float(res["masks"].min()) >= 0 and float(res["masks"].max()) <= 1
        assert res["labels"].min() >= 1 and res["labels"].max() <= K
        assert float(res["boxes"][:, 2].max()) <= w and float(res["boxes"][:, 3].max()) <= h
        assert bool((res["scores"] > 1e-4).all())
    assert model.category_stats.num_classes == K
    assert CategoryStats.from_dict(model.category_stats.to_dict()).num_classes == K


def test_predict_masks_pasted_and_roi_level():
    model = tiny_model().eval()
    with torch.no_grad():
        feats, image_list = model.extract_features(IMAGES)
        boxes = [torch.tensor([[5.0, 5, 30, 40]]), torch.zeros(0, 4)]
        labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.int64)]
        pasted = model.predict_masks(feats, boxes, labels, image_list.image_sizes)
        roi = model.predict_masks(feats, boxes, labels, image_list.image_sizes, paste=False)
    assert pasted[0].shape == (1, 1, 64, 70) and pasted[1].shape == (0, 1, 70, 64)
    assert roi[0].shape == (1, 1, 28, 28)
    # pasting puts the mask inside its box (+1 px padding): nothing far outside it
    assert float(pasted[0][0, 0, 45:, :].max()) == 0.0


def test_preprocess_normalises_and_pads_to_32_without_resizing():
    model = tiny_model()
    image = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1).expand(3, 40, 33).clone()
    image[:, 0, 0] = torch.tensor([0.714, 0.680, 0.631])  # mean + std -> 1.0
    batch = model.preprocess([image, torch.zeros(3, 20, 65)])
    assert batch.tensors.shape == (2, 3, 64, 96)
    assert batch.image_sizes == [(40, 33), (20, 65)]
    assert batch.tensors[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert float(batch.tensors[0, :, 1:40, 1:33].abs().max()) < 1e-6  # mean pixel -> 0
    assert float(batch.tensors[0, :, 40:, :].abs().max()) == 0.0  # padding is zero


def test_box_levels_fpn_rule():
    # floor(4 + log2(sqrt(area) / 224)) clamped to 2..5, minus 2
    sides = [20.0, 56.0, 111.0, 112.0, 224.0, 448.0, 1000.0]
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sides])
    assert fpn_levels(boxes).tolist() == [0, 0, 0, 1, 2, 3, 3]


def test_eq1_level_assignment_is_wired():
    fn = build_mask_levels(
        load_config(None, ["model.mask_head.level_assign=eq1"]).model.mask_head
    ).train_levels
    boxes = torch.tensor([[0.0, 0.0, 224.0, 224.0]] * 3)
    area = 224.0 * 224.0
    # Eq. 1: min(box level 2, floor(S_mask / (0.25 S_bbox)), 3)
    mask_areas = torch.tensor([0.2 * area, 0.6 * area, 1.0 * area])
    assert fn(boxes, mask_areas).tolist() == [0, 2, 2]
    assert fn(boxes, None).tolist() == [2, 2, 2]


def test_ignore_overlaps_by_iou():
    proposals = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    labels = torch.tensor([0, 0, 2, 0])
    # IoU([0,0,10,10], [0,0,10,5]) = 50 / 100 = 0.5 -> ignored (>=); [0,0,10,4]: 0.4 -> kept
    assert ignore_overlaps(proposals, labels, torch.tensor([[0.0, 0, 10, 5]]), 0.5).tolist() == [
        True,
        True,
        False,  # foreground proposals are never ignored
        False,
    ]
    assert not ignore_overlaps(proposals, labels, torch.tensor([[0.0, 0, 10, 4]]), 0.5).any()


def test_ignored_proposals_are_not_sampled():
    model = tiny_model().train()
    heads = model.roi_heads
    tgt = target(64, 70)
    ignore = torch.tensor([[0.0, 40, 12, 62]])  # background area away from both GT boxes
    tgt["ignore_boxes"] = ignore
    proposals = [torch.cat([ignore, ignore + 0.5, torch.tensor([[55.0, 0, 69, 10]])])]
    _, labels = heads.sampler.match(torch.cat([proposals[0], tgt["boxes"]]), tgt)
    assert labels.tolist() == [-1, -1, 0, 1, 3]
    samples = heads.sampler.sample(proposals, [tgt])
    assert not any(torch.equal(p, ignore[0]) for p in samples.boxes[0])
    assert sorted(samples.labels[0].tolist()) == [0, 1, 3]
    assert samples.is_gt[0].sum() == 2  # the two GT boxes joined the proposals


def test_loss_weight_scales_every_loss():
    model = tiny_model().train()
    torch.manual_seed(3)
    full = model(IMAGES, [target(64, 70, 1.0), target(70, 64, 1.0)])
    torch.manual_seed(3)
    half = model(IMAGES, [target(64, 70, 0.5), target(70, 64, 0.5)])
    for key in full:
        assert half[key].item() == pytest.approx(0.5 * full[key].item(), rel=1e-4), key


def test_proposal_weights_per_image():
    labels = [torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)]
    assert proposal_weights([{"loss_weight": 1.0}, {}], labels) is None
    assert proposal_weights([{"loss_weight": 0.3}, {}], labels).tolist() == pytest.approx([0.3, 0.3, 1, 1, 1])


def test_weighted_rpn_loss_matches_torchvision_and_scales():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead

    rpn = WeightedRPN(AnchorGenerator(((8,),), ((1.0,),)), RPNHead(4, 1), 0.7, 0.3, 4, 0.5, {}, {}, 0.7)
    objectness = torch.tensor([1.0, -1.0, 0.5, 2.0, 0.0, -2.0])
    deltas = torch.arange(24, dtype=torch.float32).view(6, 4) / 10
    labels = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, -1.0])]
    reg = [torch.zeros(3, 4), torch.ones(3, 4)]
    torch.manual_seed(0)
    base = rpn.compute_loss(objectness, deltas, labels, reg)
    rpn._image_weights = [1.0, 1.0]
    torch.manual_seed(0)
    same = rpn.compute_loss(objectness, deltas, labels, reg)
    rpn._image_weights = [0.0, 1.0]
    torch.manual_seed(0)
    second_only = rpn.compute_loss(objectness, deltas, labels, reg)
    assert [x.item() for x in same] == pytest.approx([x.item() for x in base], rel=1e-6)
    # sampler (4 per image, half positive): image 1 -> anchor 0 (pos) + 1, 2 (neg); image 2 -> 4 (pos) + 3
    # (neg): 5 sampled. With image 1 weighted 0 only anchors 3 (label 0, logit 2) and 4 (label 1, logit 0)
    # count: (softplus(2) + log 2) / 5
    bce = np.log1p(np.exp(2.0)) + np.log(2.0)
    assert second_only[0].item() == pytest.approx(bce / 5, rel=1e-5)
    # box term: only image 2's positive (anchor 4): smooth-l1(beta 1/9) of deltas 1.6..1.9 vs target 1
    box = sum(abs(d - 1) - 0.5 / 9 for d in (1.6, 1.7, 1.8, 1.9))
    assert second_only[1].item() == pytest.approx(box / 5, rel=1e-5)


def test_classifier_width_follows_the_loss():
    softmax = tiny_model()
    eql = tiny_model("model.roi_heads.cls_loss=eql")
    assert softmax.roi_heads.box_head.predictor.cls_score.out_features == K + 1
    assert eql.roi_heads.box_head.predictor.cls_score.out_features == K
    assert isinstance(eql.roi_heads.cls_loss, EqualizationLoss)
    # image_count (50, 1, 30, 2) / 1000 images: classes 2 and 4 are below 1.76e-3
    assert eql.roi_heads.cls_loss.tail.tolist() == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.roi_heads.cls_loss=focal", "model.roi_heads.cls_loss"),
        ("model.mask_head.level_assign=eq2", "model.mask_head.level_assign"),
        ("model.backbone.name=vgg", "model.backbone.name"),
        ("model.backbone.dcn_stages=[2]", "model.backbone.dcn_stages"),
    ],
)
def test_unwired_or_unknown_values_name_the_key(override, key):
    with pytest.raises(LvisctlError, match=key):
        tiny_model(override)


def test_other_seams_build_and_train():
    model = tiny_model(
        "model.roi_heads.roi_pool=deform", "model.mask_head.loss=balanced", "model.mask_head.level_assign=eq1"
    ).train()
    losses = model(IMAGES, [target(64, 70), target(70, 64)])
    assert torch.isfinite(sum(losses.values()))
    with torch.no_grad():
        out = model.eval()(IMAGES[:1])
    assert out[0]["masks"].shape[1:] == (1, 64, 70)


def _resnet18_cfg(**kw):
    cfg = load_config(None, ["model.backbone.name=resnet18"])
    return cfg.model.backbone.replace(kw)


def test_backbone_weights_file_errors(tmp_path):
    with pytest.raises(LvisctlError, match="not found"):
        build_trunk(_resnet18_cfg(weights=str(tmp_path / "missing.pth")))
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(LvisctlError, match="does not match backbone resnet18") as err:
        build_trunk(_resnet18_cfg(weights=str(bad)))
    assert "\n" not in str(err.value)


def test_backbone_weights_load_before_freezing(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        ref.bn1.running_mean.fill_(0.25)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    trunk = build_trunk(_resnet18_cfg(weights=str(path), dcn_stages=[5]))
    assert torch.equal(trunk.stem.conv1.weight, ref.conv1.weight)
    assert trunk.stem.bn1.running_mean[0].item() == 0.25  # FrozenBN kept the file's statistics
    assert isinstance(trunk.stages[3][0].conv2, DeformConv3x3)
    assert torch.equal(trunk.stages[3][0].conv2.weight, ref.layer4[0].conv2.weight)
    # nothing is left unloaded in silence: the DCN offsets (2 blocks x weight + bias) are named
    offsets = [k for k in trunk.state_dict() if ".offset." in k]
    assert len(offsets) == 4
    assert trunk.weights_note == (
        f"{path}: loaded {len(ref.state_dict()) - 2} of {len(ref.state_dict()) - 2 + 4} backbone tensors "
        "(resnet18); left at their initialisation: 4 DCN offset tensors (zero, by design)"
    )
    # freeze_at = 2: stem and res2 frozen, res3 trains
    assert not trunk.stem.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in trunk.stages[0].parameters())
    assert all(p.requires_grad for p in trunk.stages[1].parameters())


def test_dcn_starts_as_the_plain_conv():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
    dcn = DeformConv3x3(conv)
    x = torch.randn(1, 8, 9, 9)
    assert torch.allclose(dcn(x), conv(x), atol=1e-5)


def test_resnest_backbone_builds():
    cfg = load_config(None, ["model.backbone.name=resnest50", "model.backbone.norm=gn"]).model.backbone
    trunk = build_trunk(cfg)
    assert trunk.out_channels == [256, 512, 1024, 2048]
    assert not any(p.requires_grad for p in trunk.body.layer1.parameters())


def test_cpu_autocast_forward():
    model = tiny_model("model.roi_heads.cls_loss=eql").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(IMAGES, [target(64, 70), target(70, 64)])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_image_without_annotations_trains():
    model = tiny_model().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    empty["masks"] = torch.zeros(0, 64, 70, dtype=torch.uint8)
    losses = model(IMAGES, [empty, target(70, 64)])
    assert all(torch.isfinite(v) for v in losses.values())
    losses = model(IMAGES[:1], [empty])
    assert losses["loss_mask"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
