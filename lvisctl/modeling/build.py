"""``build_model(cfg, stats)``: the one place that turns ``cfg.model`` into an ``LvisMaskRCNN``.

Every seam is chosen here by config (see ``configs/_base_/model.yaml``): classification loss
(``model.roi_heads.cls_loss``: softmax / sigmoid / eql / bags), box RoI extractor (``roi_pool``), mask level
assignment (``model.mask_head.level_assign`` + ``eq1_*``), mask loss, mask head (``num_convs``; ``boundary``:
BMask R-CNN's head + ``loss_boundary``) and the MaskIoU head (``mask_iou``: ``loss_mask_iou``, rescoring).
An unknown value raises an ``LvisctlError`` naming the key.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import box_area

from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.losses.balanced_mask import balanced_mask_loss
from lvisctl.losses.classification import ClassificationLoss, SigmoidBCELoss, SoftmaxCELoss
from lvisctl.losses.eql import EqualizationLoss
from lvisctl.losses.group_softmax import BalancedGroupSoftmax
from lvisctl.modeling.backbones import build_trunk
from lvisctl.modeling.boundary_head import BoundaryPreservingMaskHead
from lvisctl.modeling.box_head import BoxHead
from lvisctl.modeling.deform_roi_pool import DeformRoIPool
from lvisctl.modeling.detector import LvisMaskRCNN
from lvisctl.modeling.fpn import BackboneWithFPN
from lvisctl.modeling.mask_assign import BOX_RULES, assign_mask_levels
from lvisctl.modeling.mask_assign import box_levels as eq1_box_levels
from lvisctl.modeling.mask_head import BCEMaskLoss, MaskHead
from lvisctl.modeling.mask_iou_head import MaskIoUHead
from lvisctl.modeling.roi_heads import LevelFn, LvisRoIHeads, RoIAlignExtractor, box_levels
from lvisctl.modeling.rpn import WeightedRPN

CLS_LOSSES = ("softmax", "sigmoid", "eql", "bags")


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LvisctlError(f"{key}: unknown value {value!r} (choose from {', '.join(allowed)})")


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
    edges = _bin_edges(rcfg.bags_bin_edges)
    return BalancedGroupSoftmax(stats.instance_count, edges, float(rcfg.bags_others_ratio))


def _bin_edges(edges: list) -> list[int]:
    """``model.roi_heads.bags_bin_edges``: strictly increasing positive instance counts."""
    if not edges or not all(isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in edges):
        raise LvisctlError(f"model.roi_heads.bags_bin_edges: need positive integer counts, got {edges}")
    if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
        raise LvisctlError(f"model.roi_heads.bags_bin_edges: must increase strictly, got {edges}")
    return [int(e) for e in edges]


class BalancedMaskLoss(nn.Module):
    """The paper's Dice + weighted BCE (``lvisctl.losses.balanced_mask``) behind the mask-loss hook."""

    def __init__(self, lam: float = 1.0, eps: float = 1.0) -> None:
        super().__init__()
        self.lam, self.eps = lam, eps

    def loss(self, logits: Tensor, targets: Tensor, area_ratio: Tensor) -> Tensor:
        binary = (targets >= 0.5).to(logits.dtype)
        return balanced_mask_loss(logits, binary, area_ratio, lam=self.lam, eps=self.eps)


def build_mask_loss(mcfg) -> nn.Module:
    _choice("model.mask_head.loss", mcfg.loss, ("bce", "balanced"))
    if mcfg.loss == "bce":
        return BCEMaskLoss()
    return BalancedMaskLoss(float(mcfg.balanced_lambda), float(mcfg.balanced_eps))


def build_mask_level_fn(mcfg) -> LevelFn:
    """Training levels. ``box``: FPN rule (224 px -> P4). ``eq1``: paper Eq. 1 (``mask_assign``) with the
    box term ``model.mask_head.eq1_box_rule`` (test time: ``LvisRoIHeads`` runs ``two_pass_mask_predict``)."""
    _choice("model.mask_head.level_assign", mcfg.level_assign, ("box", "eq1"))
    _choice("model.mask_head.eq1_box_rule", mcfg.eq1_box_rule, BOX_RULES)
    if mcfg.level_assign == "box":
        return box_levels
    rule = str(mcfg.eq1_box_rule)

    def eq1_levels(boxes: Tensor, mask_areas: Tensor | None) -> Tensor:
        if mask_areas is None:
            return eq1_box_levels(box_area(boxes), rule)
        return assign_mask_levels(box_area(boxes), mask_areas, rule)

    return eq1_levels


def build_box_extractor(rcfg, channels: int) -> nn.Module:
    """``model.roi_heads.roi_pool``: RoIAlign, or deformable RoI pooling for the box branch (as mmdet's
    mdpool configs; the mask branch keeps RoIAlign, whose 14x14 offsets fc would be ~50M weights)."""
    _choice("model.roi_heads.roi_pool", rcfg.roi_pool, ("align", "deform"))
    res, ratio, aligned = int(rcfg.pooler_resolution), int(rcfg.sampling_ratio), bool(rcfg.aligned)
    if rcfg.roi_pool == "align":
        return RoIAlignExtractor(res, ratio, aligned)
    return DeformRoIPool(
        channels,
        output_size=res,
        sampling_ratio=ratio,
        gamma=float(rcfg.deform_gamma),
        hidden_channels=int(rcfg.deform_hidden_channels),
        aligned=aligned,
    )


class UnroundedAnchorGenerator(AnchorGenerator):
    """Cell anchors without torchvision's rounding to whole pixels (mmdet's and detectron2's layout)."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = ((1 / h_ratios)[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


def build_rpn(rpn_cfg, channels: int) -> WeightedRPN:
    sizes = tuple((int(s),) for s in rpn_cfg.anchor_sizes)
    if len(sizes) != 5:
        raise LvisctlError(f"model.rpn.anchor_sizes: need 5 sizes (P2..P6), got {len(sizes)}")
    ratios = (tuple(float(r) for r in rpn_cfg.aspect_ratios),) * len(sizes)
    round_anchors = bool(rpn_cfg.get("anchor_round", True))
    anchors = AnchorGenerator(sizes, ratios) if round_anchors else UnroundedAnchorGenerator(sizes, ratios)
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


def build_mask_head(mask_cfg, num_classes: int, channels: int) -> MaskHead | BoundaryPreservingMaskHead:
    """Mask R-CNN's head, or with ``model.mask_head.boundary`` BMask R-CNN's boundary-preserving head
    (same ``num_convs`` / ``conv_dim``; both predict K + 1 class-specific channels)."""
    convs, dim = int(mask_cfg.num_convs), int(mask_cfg.conv_dim)
    if mask_cfg.boundary:
        return BoundaryPreservingMaskHead(channels, num_classes + 1, conv_dim=dim, num_convs=convs)
    return MaskHead(channels, num_classes, convs, dim)


def build_roi_heads(mcfg, stats: CategoryStats, channels: int, tcfg) -> LvisRoIHeads:
    rcfg, mask_cfg = mcfg.roi_heads, mcfg.mask_head  # tcfg: test-time settings, cfg.inference
    k = stats.num_classes
    cls_loss = build_cls_loss(rcfg, stats)
    mask_res, ratio, aligned = int(mask_cfg.pooler_resolution), int(rcfg.sampling_ratio), bool(rcfg.aligned)
    # BMask's recipe: boundary features pooled from P2 at 2x the mask RoI size (one RoIAlign on one level)
    boundary_extractor = RoIAlignExtractor(2 * mask_res, ratio, aligned) if mask_cfg.boundary else None
    # MS R-CNN's MaskIoU head on the mask RoI features; its widths follow the mask convs and box fcs
    # (256 / 1024 by default, MS R-CNN's values)
    mask_iou_head = (
        MaskIoUHead(channels, k + 1, mask_res, int(mask_cfg.conv_dim), int(rcfg.fc_dim))
        if mask_cfg.mask_iou
        else None
    )
    return LvisRoIHeads(
        num_classes=k,
        box_extractor=build_box_extractor(rcfg, channels),
        box_head=BoxHead(
            channels,
            int(rcfg.pooler_resolution),
            int(rcfg.fc_dim),
            k,
            cls_loss,
            num_convs=int(rcfg.get("box_convs", 0)),
        ),
        cls_loss=cls_loss,
        mask_extractor=RoIAlignExtractor(mask_res, ratio, aligned),
        mask_head=build_mask_head(mask_cfg, k, channels),
        mask_loss=build_mask_loss(mask_cfg),
        mask_resolution=mask_res,
        mask_level_fn=build_mask_level_fn(mask_cfg),
        mask_level_assign=str(mask_cfg.level_assign),
        eq1_box_rule=str(mask_cfg.eq1_box_rule),
        eq1_single_pass=bool(mask_cfg.eq1_single_pass),
        boundary_extractor=boundary_extractor,
        boundary_loss_weight=float(mask_cfg.boundary_loss_weight),
        mask_iou_head=mask_iou_head,
        mask_iou_loss_weight=float(mask_cfg.mask_iou_loss_weight),
        fg_iou_thresh=float(rcfg.fg_iou_thresh),
        bg_iou_thresh=float(rcfg.bg_iou_thresh),
        batch_size_per_image=int(rcfg.batch_size_per_image),
        positive_fraction=float(rcfg.positive_fraction),
        bbox_reg_weights=tuple(float(w) for w in rcfg.bbox_reg_weights),
        ignore_iou=float(rcfg.ignore_iou),
        score_thresh=float(tcfg.score_thresh),
        nms_thresh=float(tcfg.nms_thresh),
        detections_per_img=int(tcfg.detections_per_image),
    )


def build_model(cfg, stats: CategoryStats) -> LvisMaskRCNN:
    """Build the detector from the whole config (``cfg.model``); num_classes = ``stats.num_classes`` + bg."""
    mcfg = cfg.model
    channels = int(mcfg.fpn.out_channels)
    backbone = BackboneWithFPN(build_trunk(mcfg.backbone), channels)
    return LvisMaskRCNN(
        backbone,
        build_rpn(mcfg.rpn, channels),
        build_roi_heads(mcfg, stats, channels, cfg.inference),
        stats,
        pixel_mean=[float(v) for v in mcfg.pixel_mean],
        pixel_std=[float(v) for v in mcfg.pixel_std],
        size_divisible=int(mcfg.size_divisible),
    )
