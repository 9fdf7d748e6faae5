"""``build_model(cfg, stats)``: the one place that turns ``cfg.model`` into an ``LvisMaskRCNN``.

Every part chosen by a config value is built from a name -> factory table below (``CHOICE_TABLES``, keyed
by the config key; ``lvisctl.config.choices`` lists the same names with descriptions and ``load_config``
checks them up front): RoI-head type (``model.roi_heads.type``: standard / cascade / htc),
classification loss (``cls_loss``: the plug-in registry ``lvisctl.registry.CLS_LOSSES``, filled by the
losses' own ``@CLS_LOSSES.register``), box RoI extractor (``roi_pool``), mask level assignment
(``model.mask_head.level_assign`` + ``eq1_*``), mask loss (``model.mask_head.loss``). Switches: extra
mask convs (``num_convs``), the boundary head (``boundary``) and the MaskIoU head (``mask_iou``, on the
last stage). Every switch applies to every stage of every head type. An unknown value raises an
``LvisctlError`` naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.losses.balanced_mask import BalancedMaskLoss
from lvisctl.losses.classification import ClassificationLoss
from lvisctl.losses.mask_rcnn import BCEMaskLoss
from lvisctl.modeling.backbones import build_trunk
from lvisctl.modeling.boundary_head import BoundaryPreservingMaskHead
from lvisctl.modeling.box_branch import BoxBranch
from lvisctl.modeling.box_head import BoxHead
from lvisctl.modeling.deform_roi_pool import DeformRoIPool
from lvisctl.modeling.detector import LvisMaskRCNN
from lvisctl.modeling.fpn import BackboneWithFPN
from lvisctl.modeling.mask_assign import BOX_RULES, MaskLevelAssigner
from lvisctl.modeling.mask_branch import MaskBranch
from lvisctl.modeling.mask_head import MaskHead
from lvisctl.modeling.mask_iou_head import MaskIoUHead
from lvisctl.modeling.poolers import RoIAlignExtractor
from lvisctl.modeling.roi_heads import (
    CascadeRoIHeads,
    DetectionPostprocess,
    RoIHeads,
    RoIStage,
    StandardRoIHeads,
)
from lvisctl.modeling.rpn import Fp32AnchorGenerator, Fp32RPNHead, WeightedRPN
from lvisctl.modeling.sampling import ProposalSampler
from lvisctl.registry import CLS_LOSSES, Registry

Config = Any  # an OmegaConf node of the model section


def pick(key: str, table: Mapping[str, Any], value: object) -> Any:
    """The factory of ``value`` in the choice table of ``key``; one-line error for an unknown value."""
    if value not in table:
        raise LvisctlError(f"{key}: unknown value {value!r} (choose from {', '.join(table)})")
    return table[value]


# ------------------------------------------------------------------------------ classification losses
def build_cls_loss(rcfg: Config, stats: CategoryStats) -> ClassificationLoss:
    """``model.roi_heads.cls_loss``: the loss registered under that name builds itself (``from_config``)."""
    return CLS_LOSSES.get(rcfg.cls_loss).from_config(rcfg, stats)


# ------------------------------------------------------------------------------ RoI extractors
def _align_pool(rcfg: Config, channels: int) -> nn.Module:
    return RoIAlignExtractor(int(rcfg.pooler_resolution), int(rcfg.sampling_ratio), bool(rcfg.aligned))


def _deform_pool(rcfg: Config, channels: int) -> nn.Module:
    return DeformRoIPool(
        channels,
        output_size=int(rcfg.pooler_resolution),
        # a fixed sample count: mmdet's adaptive 0 (cascade.sampling_ratio) becomes 2, lvisctl's choice
        sampling_ratio=int(rcfg.sampling_ratio) or 2,
        gamma=float(rcfg.deform_gamma),
        hidden_channels=int(rcfg.deform_hidden_channels),
        aligned=bool(rcfg.aligned),
    )


class UnroundedAnchorGenerator(Fp32AnchorGenerator):
    """Cell anchors without torchvision's rounding to whole pixels (mmdet's and detectron2's layout)."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = ((1 / h_ratios)[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


# deform: the box branch only, as mmdet's mdpool configs (the mask branch keeps RoIAlign: a 14x14
# offsets fc would be ~50M weights)
ROI_POOLS: dict[str, Callable[[Config, int], nn.Module]] = {"align": _align_pool, "deform": _deform_pool}


def build_box_extractor(rcfg: Config, channels: int) -> nn.Module:
    """``model.roi_heads.roi_pool``."""
    return pick("model.roi_heads.roi_pool", ROI_POOLS, rcfg.roi_pool)(rcfg, channels)


# ------------------------------------------------------------------------------ mask branch parts
MASK_LOSSES: dict[str, Callable[[Config], nn.Module]] = {
    "bce": lambda mask_cfg: BCEMaskLoss(),
    "balanced": lambda mask_cfg: BalancedMaskLoss(
        float(mask_cfg.balanced_lambda), float(mask_cfg.balanced_eps)
    ),
}

MASK_LEVEL_ASSIGNS: dict[str, Callable[[Config], MaskLevelAssigner]] = {
    "box": lambda mask_cfg: MaskLevelAssigner("box"),
    "eq1": lambda mask_cfg: MaskLevelAssigner(
        "eq1", str(mask_cfg.eq1_box_rule), bool(mask_cfg.eq1_single_pass)
    ),
}

# Eq. 1's box term: the rule names are interpreted in lvisctl/modeling/mask_assign.py
EQ1_BOX_RULES: dict[str, str] = {rule: rule for rule in BOX_RULES}


def build_mask_loss(mask_cfg: Config) -> nn.Module:
    return pick("model.mask_head.loss", MASK_LOSSES, mask_cfg.loss)(mask_cfg)


def build_mask_levels(mask_cfg: Config) -> MaskLevelAssigner:
    """Mask RoI levels. ``box``: FPN rule (224 px -> P4). ``eq1``: paper Eq. 1 with the box term
    ``model.mask_head.eq1_box_rule`` (two passes at test time unless ``eq1_single_pass``)."""
    pick("model.mask_head.eq1_box_rule", EQ1_BOX_RULES, mask_cfg.eq1_box_rule)
    return pick("model.mask_head.level_assign", MASK_LEVEL_ASSIGNS, mask_cfg.level_assign)(mask_cfg)


def build_rpn(rpn_cfg, channels: int) -> WeightedRPN:
    sizes = tuple((int(s),) for s in rpn_cfg.anchor_sizes)
    if len(sizes) != 5:
        raise LvisctlError(f"model.rpn.anchor_sizes: need 5 sizes (P2..P6), got {len(sizes)}")
    ratios = (tuple(float(r) for r in rpn_cfg.aspect_ratios),) * len(sizes)
    round_anchors = bool(rpn_cfg.get("anchor_round", True))
    anchors = Fp32AnchorGenerator(sizes, ratios) if round_anchors else UnroundedAnchorGenerator(sizes, ratios)
    head = Fp32RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=int(rpn_cfg.head_convs))
    rpn = WeightedRPN(
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
    rpn.ignore_iof_thresh = float(rpn_cfg.ignore_iof_thresh)  # self-training's anchor ignore rule
    return rpn


def build_mask_head(
    mask_cfg: Config, num_classes: int, channels: int, flow_in: bool = False
) -> MaskHead | BoundaryPreservingMaskHead:
    """Mask R-CNN's head, or with ``model.mask_head.boundary`` BMask R-CNN's boundary-preserving head
    (same ``num_convs`` / ``conv_dim``; both predict K + 1 class-specific channels). ``flow_in``: the head
    takes HTC's information flow from the previous stage's head."""
    convs, dim = int(mask_cfg.num_convs), int(mask_cfg.conv_dim)
    if mask_cfg.boundary:
        return BoundaryPreservingMaskHead(
            channels, num_classes + 1, conv_dim=dim, num_convs=convs, flow_in=flow_in
        )
    return MaskHead(channels, num_classes, convs, dim, flow_in=flow_in)


def build_mask_branch(
    mcfg: Config, num_classes: int, channels: int, *, mask_iou: bool, flow_in: bool = False
) -> MaskBranch:
    rcfg, mask_cfg = mcfg.roi_heads, mcfg.mask_head
    mask_res, ratio, aligned = int(mask_cfg.pooler_resolution), int(rcfg.sampling_ratio), bool(rcfg.aligned)
    # BMask's recipe: boundary features pooled from P2 at 2x the mask RoI size (one RoIAlign on one level)
    boundary_extractor = RoIAlignExtractor(2 * mask_res, ratio, aligned) if mask_cfg.boundary else None
    # MS R-CNN's MaskIoU head on the mask RoI features; its widths follow the mask convs and box fcs
    # (256 / 1024 by default, MS R-CNN's values)
    mask_iou_head = (
        MaskIoUHead(channels, num_classes + 1, mask_res, int(mask_cfg.conv_dim), int(rcfg.fc_dim))
        if mask_iou
        else None
    )
    return MaskBranch(
        RoIAlignExtractor(mask_res, ratio, aligned),
        build_mask_head(mask_cfg, num_classes, channels, flow_in),
        build_mask_loss(mask_cfg),
        build_mask_levels(mask_cfg),
        mask_size=2 * mask_res,
        boundary_extractor=boundary_extractor,
        boundary_loss_weight=float(mask_cfg.boundary_loss_weight),
        mask_iou_head=mask_iou_head,
        mask_iou_loss_weight=float(mask_cfg.mask_iou_loss_weight),
    )


def build_box_branch(
    rcfg: Config,
    stats: CategoryStats,
    channels: int,
    *,
    bbox_reg_weights: list[float],
    class_agnostic: bool = False,
) -> BoxBranch:
    k = stats.num_classes
    cls_loss = build_cls_loss(rcfg, stats)
    head = BoxHead(
        channels,
        int(rcfg.pooler_resolution),
        int(rcfg.fc_dim),
        k,
        cls_loss,
        class_agnostic,
        num_convs=int(rcfg.get("box_convs", 0)),  # 4conv1fc heads of imported weights
    )
    weights = tuple(float(w) for w in bbox_reg_weights)
    if len(weights) != 4:
        raise LvisctlError(f"model.roi_heads: box-coder weights need 4 values, got {list(bbox_reg_weights)}")
    branch = BoxBranch(build_box_extractor(rcfg, channels), head, cls_loss, k, weights, class_agnostic)
    branch.smooth_l1_beta = float(rcfg.smooth_l1_beta)
    return branch


def build_sampler(rcfg: Config, fg_iou: float, bg_iou: float) -> ProposalSampler:
    return ProposalSampler(
        fg_iou,
        bg_iou,
        int(rcfg.batch_size_per_image),
        float(rcfg.positive_fraction),
        float(rcfg.ignore_iou),
    )


def build_postprocess(test_cfg: Config) -> DetectionPostprocess:
    return DetectionPostprocess(
        float(test_cfg.score_thresh), float(test_cfg.nms_thresh), int(test_cfg.detections_per_image)
    )


# ------------------------------------------------------------------------------ RoI-head types
def build_standard_heads(mcfg: Config, stats: CategoryStats, channels: int, test_cfg: Config) -> RoIHeads:
    """Mask R-CNN: one stage at ``fg_iou_thresh`` / ``bg_iou_thresh``, class-specific regression."""
    rcfg = mcfg.roi_heads
    return StandardRoIHeads(
        build_sampler(rcfg, float(rcfg.fg_iou_thresh), float(rcfg.bg_iou_thresh)),
        build_box_branch(rcfg, stats, channels, bbox_reg_weights=list(rcfg.bbox_reg_weights)),
        build_mask_branch(mcfg, stats.num_classes, channels, mask_iou=bool(mcfg.mask_head.mask_iou)),
        build_postprocess(test_cfg),
    )


def _cascade_settings(ccfg: Config) -> tuple[list[float], list[float], list[list[float]]]:
    ious = [float(t) for t in ccfg.iou_thresholds]
    weights = [float(w) for w in ccfg.stage_loss_weights]
    reg = [list(w) for w in ccfg.bbox_reg_weights]
    if not ious or not len(ious) == len(weights) == len(reg):
        raise LvisctlError(
            "model.roi_heads.cascade: iou_thresholds, stage_loss_weights and bbox_reg_weights need one "
            f"entry per stage, got {len(ious)}, {len(weights)} and {len(reg)}"
        )
    return ious, weights, reg


# model.roi_heads.cascade.test_mask -> CascadeRoIHeads' test_mask (the heads implement both)
TEST_MASKS: dict[str, str] = {"mean": "mean", "last": "last"}


def cascade_view(mcfg: Config) -> Config:
    """``mcfg`` with the cascade's own RoIAlign and SmoothL1 settings (``roi_heads.cascade.*``, mmdet's HTC
    values) in place of the standard head's (torchvision's), so every builder below reads one place."""
    from lvisctl.config.loader import Config as ConfigDict
    from lvisctl.config.loader import deep_merge

    c = mcfg.roi_heads.cascade
    own = {"sampling_ratio": c.sampling_ratio, "aligned": c.aligned, "smooth_l1_beta": c.smooth_l1_beta}
    return ConfigDict.wrap(deep_merge(mcfg, {"roi_heads": own}))


def _build_cascade(
    mcfg: Config, stats: CategoryStats, channels: int, test_cfg: Config, *, htc: bool
) -> RoIHeads:
    mcfg = cascade_view(mcfg)
    rcfg = mcfg.roi_heads
    ious, weights, reg = _cascade_settings(rcfg.cascade)
    last = len(ious) - 1
    stages = [
        RoIStage(
            build_sampler(rcfg, iou, iou),  # mmdet's cascade assigners: pos = neg threshold
            build_box_branch(
                rcfg,
                stats,
                channels,
                bbox_reg_weights=reg[i],
                class_agnostic=bool(rcfg.cascade.class_agnostic),
            ),
            # Mask Scoring on the last mask head (whose masks are the output); the flow enters stages 1..
            build_mask_branch(
                mcfg,
                stats.num_classes,
                channels,
                mask_iou=bool(mcfg.mask_head.mask_iou) and i == last,
                flow_in=htc and i > 0,
            ),
        )
        for i, iou in enumerate(ious)
    ]
    return CascadeRoIHeads(
        stages,
        weights,
        build_postprocess(test_cfg),
        interleaved=htc,
        mask_flow=htc,
        test_mask=pick("model.roi_heads.cascade.test_mask", TEST_MASKS, rcfg.cascade.test_mask),
    )


ROI_HEADS: dict[str, Callable[[Config, CategoryStats, int, Config], RoIHeads]] = {
    "standard": build_standard_heads,
    "cascade": lambda mcfg, stats, channels, test_cfg: _build_cascade(
        mcfg, stats, channels, test_cfg, htc=False
    ),
    "htc": lambda mcfg, stats, channels, test_cfg: _build_cascade(mcfg, stats, channels, test_cfg, htc=True),
}

# config key -> its name -> factory table (the names must equal lvisctl.config.choices.CHOICES[key])
CHOICE_TABLES: dict[str, Mapping[str, Any] | Registry[Any]] = {
    "model.roi_heads.type": ROI_HEADS,
    "model.roi_heads.cls_loss": CLS_LOSSES,  # the registry (lvisctl/losses/*: @CLS_LOSSES.register)
    "model.roi_heads.roi_pool": ROI_POOLS,
    "model.mask_head.loss": MASK_LOSSES,
    "model.mask_head.level_assign": MASK_LEVEL_ASSIGNS,
    "model.mask_head.eq1_box_rule": EQ1_BOX_RULES,
    "model.roi_heads.cascade.test_mask": TEST_MASKS,
}


def build_roi_heads(mcfg: Config, stats: CategoryStats, channels: int, test_cfg: Config) -> RoIHeads:
    """``model.roi_heads.type``; ``test_cfg`` holds the test-time score threshold, NMS and top-k."""
    return pick("model.roi_heads.type", ROI_HEADS, mcfg.roi_heads.type)(mcfg, stats, channels, test_cfg)


def build_model(cfg: Config, stats: CategoryStats) -> LvisMaskRCNN:
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
