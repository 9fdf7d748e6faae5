"""``build_model(cfg, stats)``: the one place that turns ``cfg.model`` into an ``LvisMaskRCNN``.

Every seam is chosen here by config (see ``configs/_base_/model.yaml``); a value whose module is not wired
into the core yet raises an ``LvisctlError`` naming the key.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import box_area

from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.losses.classification import ClassificationLoss, SigmoidBCELoss, SoftmaxCELoss
from lvisctl.losses.eql import EqualizationLoss
from lvisctl.modeling.backbones import build_trunk
from lvisctl.modeling.box_head import BoxHead
from lvisctl.modeling.detector import LvisMaskRCNN
from lvisctl.modeling.fpn import BackboneWithFPN
from lvisctl.modeling.mask_head import BCEMaskLoss, MaskHead
from lvisctl.modeling.roi_heads import LevelFn, LvisRoIHeads, RoIAlignExtractor, box_levels
from lvisctl.modeling.rpn import WeightedRPN

CLS_LOSSES = ("softmax", "sigmoid", "eql", "bags")


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LvisctlError(f"{key}: unknown value {value!r} (choose from {', '.join(allowed)})")


def _not_wired(key: str, value: object, module: str) -> LvisctlError:
    return LvisctlError(f"{key}: {value!r} is not wired into the model core yet ({module})")


def build_cls_loss(rcfg, stats: CategoryStats) -> ClassificationLoss:
    """``model.roi_heads.cls_loss``; EQL reads the training image frequencies from ``stats``."""
    name = rcfg.cls_loss
    _choice("model.roi_heads.cls_loss", name, CLS_LOSSES)
    if name == "softmax":
        return SoftmaxCELoss(stats.num_classes)
    if name == "sigmoid":
        return SigmoidBCELoss(stats.num_classes)
    if name == "eql":
        return EqualizationLoss(stats.image_frequency, float(rcfg.eql_lambda))
    raise _not_wired("model.roi_heads.cls_loss", name, "lvisctl/losses/group_softmax.py")


class BalancedMaskLoss(nn.Module):
    """The paper's Dice + weighted BCE (``lvisctl.losses.balanced_mask``) behind the mask-loss hook."""

    def loss(self, logits: Tensor, targets: Tensor, area_ratio: Tensor) -> Tensor:
        from lvisctl.losses.balanced_mask import balanced_mask_loss

        return balanced_mask_loss(logits, (targets >= 0.5).to(logits.dtype), area_ratio)


def build_mask_loss(mcfg) -> nn.Module:
    _choice("model.mask_head.loss", mcfg.loss, ("bce", "balanced"))
    return BCEMaskLoss() if mcfg.loss == "bce" else BalancedMaskLoss()


def build_mask_level_fn(mcfg) -> LevelFn:
    """``box``: FPN rule (224 px -> P4). ``eq1``: paper Eq. 1 from ``lvisctl.modeling.mask_assign``."""
    _choice("model.mask_head.level_assign", mcfg.level_assign, ("box", "eq1"))
    if mcfg.level_assign == "box":
        return box_levels
    from lvisctl.modeling.mask_assign import assign_mask_levels

    def eq1_levels(boxes: Tensor, mask_areas: Tensor | None) -> Tensor:
        if mask_areas is None:
            return box_levels(boxes)
        return assign_mask_levels(box_area(boxes), mask_areas)

    return eq1_levels


def build_box_extractor(rcfg, channels: int) -> nn.Module:
    """``model.roi_heads.roi_pool``: RoIAlign, or deformable RoI pooling for the box branch (as mmdet's
    mdpool configs; the mask branch keeps RoIAlign, whose 14x14 offsets fc would be ~50M weights)."""
    _choice("model.roi_heads.roi_pool", rcfg.roi_pool, ("align", "deform"))
    res, ratio, aligned = int(rcfg.pooler_resolution), int(rcfg.sampling_ratio), bool(rcfg.aligned)
    if rcfg.roi_pool == "align":
        return RoIAlignExtractor(res, ratio, aligned)
    from lvisctl.modeling.deform_roi_pool import DeformRoIPool

    return DeformRoIPool(channels, output_size=res, sampling_ratio=ratio, aligned=aligned)


def build_rpn(rpn_cfg, channels: int) -> WeightedRPN:
    sizes = tuple((int(s),) for s in rpn_cfg.anchor_sizes)
    if len(sizes) != 5:
        raise LvisctlError(f"model.rpn.anchor_sizes: need 5 sizes (P2..P6), got {len(sizes)}")
    ratios = (tuple(float(r) for r in rpn_cfg.aspect_ratios),) * len(sizes)
    anchors = AnchorGenerator(sizes, ratios)
    head = RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=int(rpn_cfg.head_convs))
    return WeightedRPN(
        anchors,
        head,
        fg_iou_thresh=float(rpn_cfg.fg_iou_thresh),
        bg_iou_thresh=float(rpn_cfg.bg_iou_thresh),
        batch_size_per_image=int(rpn_cfg.batch_size_per_image),
        positive_fraction=float(rpn_cfg.positive_fraction),
        pre_nms_top_n={
            "training": int(rpn_cfg.pre_nms_top_n_train),
            "testing": int(rpn_cfg.pre_nms_top_n_test),
        },
        post_nms_top_n={
            "training": int(rpn_cfg.post_nms_top_n_train),
            "testing": int(rpn_cfg.post_nms_top_n_test),
        },
        nms_thresh=float(rpn_cfg.nms_thresh),
    )


def build_roi_heads(mcfg, stats: CategoryStats, channels: int) -> LvisRoIHeads:
    rcfg, mask_cfg, tcfg = mcfg.roi_heads, mcfg.mask_head, mcfg.test
    if mask_cfg.boundary:
        raise _not_wired("model.mask_head.boundary", True, "lvisctl/modeling/boundary_head.py")
    if mask_cfg.mask_iou:
        raise _not_wired("model.mask_head.mask_iou", True, "lvisctl/modeling/mask_iou_head.py")
    k = stats.num_classes
    cls_loss = build_cls_loss(rcfg, stats)
    mask_res = int(mask_cfg.pooler_resolution)
    return LvisRoIHeads(
        num_classes=k,
        box_extractor=build_box_extractor(rcfg, channels),
        box_head=BoxHead(channels, int(rcfg.pooler_resolution), int(rcfg.fc_dim), k, cls_loss),
        cls_loss=cls_loss,
        mask_extractor=RoIAlignExtractor(mask_res, int(rcfg.sampling_ratio), bool(rcfg.aligned)),
        mask_head=MaskHead(channels, k, int(mask_cfg.num_convs), int(mask_cfg.conv_dim)),
        mask_loss=build_mask_loss(mask_cfg),
        mask_resolution=mask_res,
        mask_level_fn=build_mask_level_fn(mask_cfg),
        fg_iou_thresh=float(rcfg.fg_iou_thresh),
        bg_iou_thresh=float(rcfg.bg_iou_thresh),
        batch_size_per_image=int(rcfg.batch_size_per_image),
        positive_fraction=float(rcfg.positive_fraction),
        bbox_reg_weights=tuple(float(w) for w in rcfg.bbox_reg_weights),
        ignore_iou=float(rcfg.ignore_iou),
        score_thresh=float(tcfg.score_thresh),
        nms_thresh=float(tcfg.nms_thresh),
        detections_per_img=int(tcfg.detections_per_img),
    )


def build_model(cfg, stats: CategoryStats) -> LvisMaskRCNN:
    """Build the detector from the whole config (``cfg.model``); num_classes = ``stats.num_classes`` + bg."""
    mcfg = cfg.model
    channels = int(mcfg.fpn.out_channels)
    backbone = BackboneWithFPN(build_trunk(mcfg.backbone), channels)
    return LvisMaskRCNN(
        backbone,
        build_rpn(mcfg.rpn, channels),
        build_roi_heads(mcfg, stats, channels),
        stats,
        pixel_mean=[float(v) for v in mcfg.pixel_mean],
        pixel_std=[float(v) for v in mcfg.pixel_std],
        size_divisible=int(mcfg.size_divisible),
    )
