"""Stage-2 techniques wired into the model core (paper 2.2): BAGS ("GS"), Eq. 1 + balanced mask loss +
boundary supervision + extra convs + deformable RoI pooling ("HM"), and Mask Scoring ("MS")."""

import pytest
import torch

from lvisctl.config import load_config
from lvisctl.errors import LvisctlError
from lvisctl.losses.balanced_mask import BalancedMaskLoss
from lvisctl.losses.group_softmax import BalancedGroupSoftmax
from lvisctl.modeling import LvisMaskRCNN, build_model
from lvisctl.modeling.boundary_head import BoundaryPreservingMaskHead
from lvisctl.modeling.build import build_mask_levels
from lvisctl.modeling.deform_roi_pool import DeformRoIPool
from lvisctl.modeling.mask_iou_head import MaskScorer, gt_inside_ratio
from lvisctl.modeling.sampling import image_weighted
from tests.helpers.model import IMAGES, TINY, make_stats, target, tiny_model

BASE_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
ALL_ON = [
    "model.roi_heads.cls_loss=bags",
    "model.roi_heads.roi_pool=deform",
    "model.roi_heads.deform_hidden_channels=32",
    "model.mask_head.num_convs=3",
    "model.mask_head.level_assign=eq1",
    "model.mask_head.loss=balanced",
    "model.mask_head.boundary=true",
    "model.mask_head.mask_iou=true",
]
TARGETS = [target(64, 70), target(70, 64)]


def train_step(model: LvisMaskRCNN, targets=TARGETS) -> dict[str, torch.Tensor]:
    model.train()
    losses = model(IMAGES, targets)
    for name, value in losses.items():
        assert torch.isfinite(value), name
    sum(losses.values()).backward()
    return {name: value.detach() for name, value in losses.items()}


def has_grad(param: torch.nn.Parameter) -> bool:
    return param.grad is not None and float(param.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------ BAGS ("GS")
def test_bags_builds_group_softmax_from_instance_counts():
    # instance counts = 2 x image counts = (100, 2, 60, 2): bins [0,10) {2, 4}, [10,100) {3}, [100,1000) {1}
    model = tiny_model("model.roi_heads.cls_loss=bags")
    loss = model.roi_heads.cls_loss
    assert isinstance(loss, BalancedGroupSoftmax)
    assert loss.group_classes == [[2, 4], [3], [1]] and loss.others_ratio == 8.0
    # logits: background group 2 + (others + classes) per group = 2 + 3 + 2 + 2
    assert model.roi_heads.box_head.predictor.cls_score.out_features == 9
    custom = tiny_model(
        "model.roi_heads.cls_loss=bags",
        "model.roi_heads.bags_bin_edges=[50]",
        "model.roi_heads.bags_others_ratio=2",
    ).roi_heads.cls_loss
    assert custom.group_classes == [[2, 4], [1, 3]] and custom.others_ratio == 2.0 and custom.num_logits == 8


@pytest.mark.parametrize("edges", ["[]", "[100,10]", "[0,10]", "[1.5]"])
def test_bags_bin_edges_are_validated(edges):
    with pytest.raises(LvisctlError, match="model.roi_heads.bags_bin_edges"):
        tiny_model("model.roi_heads.cls_loss=bags", f"model.roi_heads.bags_bin_edges={edges}")


def test_bags_trains_and_scores_are_its_recombination():
    model = tiny_model("model.roi_heads.cls_loss=bags")
    losses = train_step(model)
    assert set(losses) == BASE_LOSSES
    assert has_grad(model.roi_heads.box_head.predictor.cls_score.weight)
    captured = {}
    model.roi_heads.box_head.register_forward_hook(lambda m, i, out: captured.update(logits=out[0]))
    model.eval()
    with torch.no_grad():
        out = model(IMAGES[:1])
    expected = model.roi_heads.cls_loss.scores(captured["logits"])  # [proposals, K]
    dets = out[0]
    assert dets["scores"].numel() > 0
    for score, label in zip(dets["scores"], dets["labels"], strict=True):
        # every detection score is P(class | group) * P(foreground) of some proposal, unchanged
        assert bool((expected[:, label - 1] == score).any())


# ------------------------------------------------------------------------------------------ HM: boundary
def test_boundary_head_pools_p2_at_twice_the_mask_size_and_adds_its_loss():
    model = tiny_model("model.mask_head.boundary=true")
    heads = model.roi_heads
    assert isinstance(heads.mask_head, BoundaryPreservingMaskHead)
    seen = {}

    def grab(module, args, kwargs, output):
        seen.update(levels=kwargs["levels"] if "levels" in kwargs else args[2], shape=output.shape)

    heads.boundary_extractor.register_forward_hook(grab, with_kwargs=True)
    losses = train_step(model)
    assert set(losses) == BASE_LOSSES | {"loss_boundary"}
    assert seen["shape"][1:] == (32, 28, 28) and bool((seen["levels"] == 0).all())  # C = fpn channels
    assert has_grad(heads.mask_head.boundary_predictor.weight)
    assert has_grad(heads.mask_head.boundary_downsample[0].weight)
    assert has_grad(heads.mask_head.predictor.weight)
    # at test time too, whatever level the mask features come from (150 px box -> P3)
    model.eval()
    with torch.no_grad():
        feats, image_list = model.extract_features(IMAGES[:1])
        boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 150.0, 150.0]])]
        model.predict_masks(feats, boxes, [torch.tensor([1, 2])], image_list.image_sizes)
    assert seen["levels"].tolist() == [0, 0] and seen["shape"] == (2, 32, 28, 28)


def test_stage1_mask_head_weights_load_into_the_boundary_head():
    stage1 = tiny_model().state_dict()  # MaskHead, 2 convs
    stage2 = tiny_model("model.mask_head.boundary=true", "model.mask_head.num_convs=3").state_dict()
    shared = {k for k in stage2 if k in stage1 and stage1[k].shape == stage2[k].shape}
    head = "roi_heads.mask.head."
    loaded = {k.removeprefix(head) for k in shared if k.startswith(head)}
    # the first two convs, the deconv and the predictor load; the third ("more") conv and the boundary
    # branch start fresh
    assert loaded == {
        f"{name}.{p}" for name in ("convs.0", "convs.2", "deconv", "predictor") for p in ("weight", "bias")
    }


def test_boundary_loss_weight_scales_the_term():
    one = train_step(tiny_model("model.mask_head.boundary=true"))
    two = train_step(tiny_model("model.mask_head.boundary=true", "model.mask_head.boundary_loss_weight=2.0"))
    assert float(two["loss_boundary"]) == pytest.approx(2 * float(one["loss_boundary"]), rel=1e-5)
    assert float(two["loss_mask"]) == pytest.approx(float(one["loss_mask"]), rel=1e-5)


def test_balanced_mask_loss_uses_the_configured_lambda_and_eps():
    model = tiny_model("model.mask_head.loss=balanced", "model.mask_head.balanced_lambda=0.5")
    assert isinstance(model.roi_heads.mask_loss, BalancedMaskLoss)
    assert (model.roi_heads.mask_loss.lam, model.roi_heads.mask_loss.eps) == (0.5, 1.0)
    # all-zero logits (p = 0.5) on a 2x2 target with one foreground pixel, area_ratio = 1/4:
    # Dice = 1 - (2*0.5 + 1) / (4*0.25 + 1 + 1) = 1/3; WBCE = ln2 * (2 + 3 * 1) / 4 (fg weight 0.5 * 4 = 2)
    logits, tgt = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    expected = 1 / 3 + 0.5 * torch.log(torch.tensor(2.0)) * 5 / 4
    assert float(model.roi_heads.mask_loss.loss(logits, tgt, torch.tensor([0.25]))) == pytest.approx(
        float(expected), rel=1e-6
    )


# ------------------------------------------------------------------------------------------ HM: Eq. 1
def test_eq1_training_levels_follow_the_configured_box_rule():
    boxes = torch.tensor([[0.0, 0.0, 224.0, 224.0]] * 3)
    mask_areas = torch.tensor([0.2, 0.6, 1.0]) * 224.0**2
    paper = load_config(None, ["model.mask_head.level_assign=eq1", "model.mask_head.eq1_box_rule=paper"])
    # log2 rule: box level floor(log2(224 / 56)) = 2; paper rule: floor(224^2 / 56^2) = 16 -> 3.
    # area term floor(S_mask / (0.25 S_bbox)) = 0, 2, 4 -> min with the box level (and 3)
    log2 = load_config(None, ["model.mask_head.level_assign=eq1"])
    assert build_mask_levels(log2.model.mask_head).train_levels(boxes, mask_areas).tolist() == [0, 2, 2]
    assert build_mask_levels(paper.model.mask_head).train_levels(boxes, mask_areas).tolist() == [0, 2, 3]
    with pytest.raises(LvisctlError, match="model.mask_head.eq1_box_rule"):
        tiny_model("model.mask_head.eq1_box_rule=sqrt")


def _mask_passes(model: LvisMaskRCNN, mask_bias: float) -> list[list[int]]:
    """Levels of each mask-extractor call when predicting masks for a 20 px and a 150 px box."""
    calls = []
    model.roi_heads.mask_extractor.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["levels"].tolist()), with_kwargs=True
    )
    torch.nn.init.constant_(model.roi_heads.mask_head.predictor.bias, mask_bias)
    model.eval()
    with torch.no_grad():
        feats, image_list = model.extract_features(IMAGES[:1])
        boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 150.0, 150.0]])]
        probs = model.predict_masks(feats, boxes, [torch.tensor([1, 2])], image_list.image_sizes, paste=False)
    assert probs[0].shape == (2, 1, 28, 28)
    return calls


def test_eq1_test_time_reruns_only_rois_whose_level_changes():
    eq1 = ["model.mask_head.level_assign=eq1"]
    # box levels (log2 rule): 20 px -> 0, 150 px -> floor(log2(150 / 56)) = 1. Masks all below 0.5 give
    # S_mask = 0 -> Eq. 1 level 0: only the 150 px box moves (to P2) and is pooled again.
    assert _mask_passes(tiny_model(*eq1), -30.0) == [[0, 1], [0]]
    # masks all above 0.5: S_mask = S_bbox -> area term 3, levels unchanged, no second pass
    assert _mask_passes(tiny_model(*eq1), 30.0) == [[0, 1]]
    # single pass: the box-term levels only
    assert _mask_passes(tiny_model(*eq1, "model.mask_head.eq1_single_pass=true"), -30.0) == [[0, 1]]
    # paper rule: floor(150^2 / 56^2) = 7 -> 3; floor(20^2 / 56^2) = 0
    assert _mask_passes(tiny_model(*eq1, "model.mask_head.eq1_box_rule=paper"), -30.0) == [[0, 3], [0]]
    # the default box rule never re-runs
    assert _mask_passes(tiny_model(), -30.0) == [[0, 1]]


# ------------------------------------------------------------------------------------------ Mask Scoring
def test_mask_scoring_trains_its_head():
    model = tiny_model("model.mask_head.mask_iou=true")
    losses = train_step(model)
    assert set(losses) == BASE_LOSSES | {"loss_mask_iou"}
    assert has_grad(model.roi_heads.mask_iou_head.fc_iou.weight)
    assert has_grad(model.roi_heads.mask_iou_head.convs[0].weight)
    double = train_step(
        tiny_model("model.mask_head.mask_iou=true", "model.mask_head.mask_iou_loss_weight=1.0")
    )
    assert float(double["loss_mask_iou"]) == pytest.approx(2 * float(losses["loss_mask_iou"]), rel=1e-5)


def test_mask_scoring_rescores_masks_only_boxes_keep_the_cls_score():
    torch.manual_seed(0)
    scored = tiny_model("model.mask_head.mask_iou=true").eval()
    plain = tiny_model().eval()  # same seed: identical weights except the MaskIoU head
    plain.load_state_dict({k: v for k, v in scored.state_dict().items() if ".mask.scorer." not in k})
    captured = []
    scored.roi_heads.mask_iou_head.register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        with_ms = scored(IMAGES)
        without = plain(IMAGES)
    assert len(captured) == 1  # one pass for all detections of both images (box-rule levels)
    labels = torch.cat([r["labels"] for r in without])
    iou = captured[0][torch.arange(labels.numel()), labels]
    cls_scores = torch.cat([r["scores"] for r in without])
    # boxes keep the classification score; masks get cls score x predicted IoU
    assert torch.equal(torch.cat([r["scores"] for r in with_ms]), cls_scores)
    assert torch.allclose(torch.cat([r["mask_scores"] for r in with_ms]), cls_scores * iou.clamp(0, 1))
    assert all("mask_scores" not in r for r in without)
    for a, b in zip(with_ms, without, strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])


def test_rescore_clamps_the_regressed_iou():
    scores = torch.tensor([0.8, 0.5, 0.4])
    assert MaskScorer.rescore(scores, torch.tensor([0.5, 1.2, -0.1])).tolist() == pytest.approx(
        [0.4, 0.5, 0.0]
    )


def test_gt_inside_ratio_is_the_instance_fraction_inside_the_roi():
    masks = torch.zeros(2, 20, 20, dtype=torch.uint8)
    masks[0, 0:10, 0:10] = 1  # 100 px
    boxes = torch.tensor([[0.0, 0.0, 5.0, 10.0], [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 4.0, 4.0]])
    # 50 / 100, 100 / 100, and an empty GT mask (index 1) -> 0
    assert gt_inside_ratio(masks, boxes, torch.tensor([0, 0, 1])).tolist() == [0.5, 1.0, 0.0]


def test_image_weighted_matches_the_hand_computed_weighting():
    values = torch.tensor([1.0, 3.0, 5.0])

    def mean(x):
        return x.mean()

    assert float(image_weighted(mean, [2, 1], [1.0, 1.0], values)) == 3.0
    # (1.0 * 2 * mean(1, 3) + 0.5 * 1 * 5) / 3 = (4 + 2.5) / 3
    assert float(image_weighted(mean, [2, 1], [1.0, 0.5], values)) == pytest.approx(6.5 / 3)
    assert float(image_weighted(mean, [0, 3], [0.5, 0.5], values)) == pytest.approx(0.5 * 3.0)


# ------------------------------------------------------------------------------------------ together
def test_all_switches_together_train_and_predict():
    model = tiny_model(*ALL_ON)
    heads = model.roi_heads
    assert isinstance(heads.box_extractor, DeformRoIPool)
    weighted = [target(64, 70), target(70, 64, loss_weight=0.5)]  # self-training weights on every term
    losses = train_step(model, weighted)
    assert set(losses) == BASE_LOSSES | {"loss_boundary", "loss_mask_iou"}
    for param in (
        heads.box_extractor.offset_fcs[0][-1].weight,  # zero-initialised last layer: grad at start
        heads.box_head.predictor.cls_score.weight,
        heads.mask_head.boundary_predictor.weight,
        heads.mask_head.convs[4].weight,  # the extra convs
        heads.mask_iou_head.fc_iou.weight,
    ):
        assert has_grad(param)
    model.eval()
    with torch.no_grad():
        out = model(IMAGES)
        feats, image_list = model.extract_features(IMAGES)
        probs, ious = heads.predict_masks_and_iou(
            [feats[k] for k in ("0", "1", "2", "3")], [r["boxes"] for r in out], [r["labels"] for r in out]
        )
    for res, (h, w), p, iou in zip(out, [(64, 70), (70, 64)], probs, ious, strict=True):
        n = res["boxes"].shape[0]
        assert 0 < n <= 300 and res["masks"].shape == (n, 1, h, w)
        assert p.shape == (n, 28, 28) and iou.shape == (n,)
        assert bool((res["scores"] >= 0).all()) and bool((res["scores"] <= 1).all())


def test_stage2_configs_build_and_freeze_backbone_neck_rpn():
    tiny = [*TINY, "model.roi_heads.deform_hidden_channels=32"]
    for name in ("gs", "gs_hm", "ms", "gs_hm_ms"):
        cfg = load_config(f"configs/stage2/{name}.yaml", tiny)
        # stage2/ms trains the MaskIoU head only (issue 21): its box and mask heads stay frozen too
        extra = ["roi_heads.box_head", "roi_heads.mask_head"] if name == "ms" else []
        assert list(cfg.train.freeze) == ["backbone", "rpn", *extra]
        model = build_model(cfg, make_stats())
        assert isinstance(model.roi_heads.cls_loss, BalancedGroupSoftmax) == name.startswith("gs")
        assert (model.roi_heads.mask_iou_head is not None) == name.endswith("ms")
    # gs_hm_ms: Eq. 1, balanced loss, boundary; gs_hm_head adds 7 mask convs + deformable pooling
    assert len(model.roi_heads.mask_head.convs) == 2 * 2  # TINY's num_convs=2 overrides the file's 7
    assert load_config("configs/stage2/gs_hm_head.yaml").model.mask_head.num_convs == 7
    # trunk, neck and RPN are separate submodules: freezing [backbone, rpn] leaves only the RoI heads
    tops = {
        n.split(".")[0] if not n.startswith("backbone.") else ".".join(n.split(".")[:2])
        for n, _ in model.named_parameters()
    }
    assert tops == {"backbone.body", "backbone.fpn", "rpn", "roi_heads"}
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(("backbone.", "rpn.")))
    train_step(model)
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("roi_heads.") for n in grads)
