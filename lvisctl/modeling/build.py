"""``build_model(cfg, stats)``: the one place that turns ``cfg.model`` into an ``LvisMaskRCNN``.

Every part chosen by a config value comes from a plug-in registry (``lvisctl.registry``: RoI-head type
``model.roi_heads.type``, mask head ``model.mask_head.type``, mask loss ``model.mask_head.loss``, backbone
``model.backbone.name``; each registered class builds itself with ``from_config``) or from a name -> factory
table (``CHOICE_TABLES``, keyed by the config key; ``lvisctl.config.choices`` lists the same names with
descriptions and ``load_config`` checks them up front); classification losses (``cls_loss``) come from
``lvisctl.registry.CLS_LOSSES`` (the losses' own ``@CLS_LOSSES.register``); box RoI
extractor (``roi_pool``), mask level assignment (``model.mask_head.level_assign`` + ``eq1_*``). Switches:
extra mask convs (``num_convs``) and the MaskIoU head (``mask_iou``, on the last stage). Every switch applies
to every stage of every head type; the RoI heads' parts are built in ``roi_parts.py``. An unknown value
raises an ``LvisctlError`` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lvisctl.config import Config, InferenceConfig, ModelConfig, RoIHeadsConfig, RPNConfig
from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.losses.classification import ClassificationLoss
from lvisctl.modeling.backbones import build_trunk
from lvisctl.modeling.detector import LvisMaskRCNN
from lvisctl.modeling.fpn import BackboneWithFPN
from lvisctl.modeling.roi_heads import RoIHeads
from lvisctl.modeling.roi_parts import (
    EQ1_BOX_RULES,
    MASK_LEVEL_ASSIGNS,
    ROI_POOLS,
    TEST_MASKS,
    RoIParts,
    build_mask_levels,
    cascade_view,
    pick,
)
from lvisctl.modeling.rpn import Fp32AnchorGenerator, Fp32RPNHead, WeightedRPN
from lvisctl.registry import CLS_LOSSES, MASK_HEADS, MASK_LOSSES, ROI_HEADS

__all__ = ["CHOICE_TABLES", "build_mask_levels", "build_model", "build_roi_heads", "cascade_view", "pick"]


# ------------------------------------------------------------------------------ classification losses
def build_cls_loss(rcfg: RoIHeadsConfig, stats: CategoryStats) -> ClassificationLoss:
    """``model.roi_heads.cls_loss``: the loss registered under that name builds itself (``from_config``)."""
    return CLS_LOSSES.get(rcfg.cls_loss).from_config(rcfg, stats)


# ------------------------------------------------------------------------------ RPN
class UnroundedAnchorGenerator(Fp32AnchorGenerator):
    """Cell anchors without torchvision's rounding to whole pixels (mmdet's and detectron2's layout)."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = ((1 / h_ratios)[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


def build_rpn(rpn_cfg: RPNConfig, channels: int) -> WeightedRPN:
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


# config key -> its name -> factory table or registry (the names equal lvisctl.config.choices')
CHOICE_TABLES: dict[str, Mapping[str, Any] | Any] = {
    "model.roi_heads.type": ROI_HEADS,
    "model.roi_heads.cls_loss": CLS_LOSSES,
    "model.roi_heads.roi_pool": ROI_POOLS,
    "model.mask_head.type": MASK_HEADS,
    "model.mask_head.loss": MASK_LOSSES,
    "model.mask_head.level_assign": MASK_LEVEL_ASSIGNS,
    "model.mask_head.eq1_box_rule": EQ1_BOX_RULES,
    "model.roi_heads.cascade.test_mask": TEST_MASKS,
}


def build_roi_heads(
    mcfg: ModelConfig, stats: CategoryStats, channels: int, test_cfg: InferenceConfig
) -> RoIHeads:
    """``model.roi_heads.type`` (``lvisctl.registry.ROI_HEADS``); ``test_cfg`` holds the test-time score
    threshold, NMS and top-k."""
    parts = RoIParts(mcfg, stats, channels, test_cfg, build_cls_loss)
    return ROI_HEADS.get(mcfg.roi_heads.type).from_config(parts)


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
