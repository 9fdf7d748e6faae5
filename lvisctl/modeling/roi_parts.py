"""The parts of the RoI heads, built from the model config: samplers, box branches, mask branches and the
detection post-processing. Each RoI-head type (``lvisctl.registry.ROI_HEADS``) builds itself from a
``RoIParts`` in its ``from_config``, so a new head type needs no edit here or in ``build.py``.

The construction order inside each builder is the order of the random draws of the weight initialisation,
kept as it was so that a seed gives the same model: box branch = classification loss, box head, extractor;
mask branch = MaskIoU head, extractor, mask head, mask loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from lvisctl.config import InferenceConfig, MaskHeadConfig, ModelConfig, RoIHeadsConfig
from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.losses.classification import ClassificationLoss
from lvisctl.modeling.box_branch import BoxBranch
from lvisctl.modeling.box_head import BoxHead
from lvisctl.modeling.deform_roi_pool import DeformRoIPool
from lvisctl.modeling.detection_postprocess import DetectionPostprocess
from lvisctl.modeling.mask_assign import BOX_RULES, MaskLevelAssigner
from lvisctl.modeling.mask_branch import MaskBranch, ScoredMaskBranch
from lvisctl.modeling.mask_iou_head import MaskScorer
from lvisctl.modeling.poolers import RoIAlignExtractor
from lvisctl.modeling.sampling import ProposalSampler
from lvisctl.registry import MASK_HEADS, MASK_LOSSES


def pick(key: str, table: Mapping[str, Any], value: object) -> Any:
    """The factory of ``value`` in the choice table of ``key``; one-line error for an unknown value."""
    if value not in table:
        raise LvisctlError(f"{key}: unknown value {value!r} (choose from {', '.join(table)})")
    return table[value]


# ------------------------------------------------------------------------------ RoI extractors
def _align_pool(rcfg: RoIHeadsConfig, channels: int) -> nn.Module:
    return RoIAlignExtractor(int(rcfg.pooler_resolution), int(rcfg.sampling_ratio), bool(rcfg.aligned))


def _deform_pool(rcfg: RoIHeadsConfig, channels: int) -> nn.Module:
    return DeformRoIPool(
        channels,
        output_size=int(rcfg.pooler_resolution),
        # a fixed sample count: mmdet's adaptive 0 (cascade.sampling_ratio) becomes 2, lvisctl's choice
        sampling_ratio=int(rcfg.sampling_ratio) or 2,
        gamma=float(rcfg.deform_gamma),
        hidden_channels=int(rcfg.deform_hidden_channels),
        aligned=bool(rcfg.aligned),
    )


# deform: the box branch only, as mmdet's mdpool configs (the mask branch keeps RoIAlign: a 14x14
# offsets fc would be ~50M weights)
ROI_POOLS: dict[str, Callable[[RoIHeadsConfig, int], nn.Module]] = {
    "align": _align_pool,
    "deform": _deform_pool,
}


def build_box_extractor(rcfg: RoIHeadsConfig, channels: int) -> nn.Module:
    """``model.roi_heads.roi_pool``."""
    return pick("model.roi_heads.roi_pool", ROI_POOLS, rcfg.roi_pool)(rcfg, channels)


# ------------------------------------------------------------------------------ mask branch parts
MASK_LEVEL_ASSIGNS: dict[str, Callable[[MaskHeadConfig], MaskLevelAssigner]] = {
    "box": lambda mask_cfg: MaskLevelAssigner("box"),
    "eq1": lambda mask_cfg: MaskLevelAssigner(
        "eq1", str(mask_cfg.eq1_box_rule), bool(mask_cfg.eq1_single_pass)
    ),
}

# Eq. 1's box term: the rule names are interpreted in lvisctl/modeling/mask_assign.py
EQ1_BOX_RULES: dict[str, str] = {rule: rule for rule in BOX_RULES}

# model.roi_heads.cascade.test_mask -> CascadeRoIHeads' test_mask (the heads implement both)
TEST_MASKS: dict[str, str] = {"mean": "mean", "last": "last"}


def build_mask_loss(mask_cfg: MaskHeadConfig) -> nn.Module:
    """``model.mask_head.loss`` (``lvisctl.registry.MASK_LOSSES``)."""
    return MASK_LOSSES.get(mask_cfg.loss).from_config(mask_cfg)


def build_mask_levels(mask_cfg: MaskHeadConfig) -> MaskLevelAssigner:
    """Mask RoI levels. ``box``: FPN rule (224 px -> P4). ``eq1``: paper Eq. 1 with the box term
    ``model.mask_head.eq1_box_rule`` (two passes at test time unless ``eq1_single_pass``)."""
    pick("model.mask_head.eq1_box_rule", EQ1_BOX_RULES, mask_cfg.eq1_box_rule)
    return pick("model.mask_head.level_assign", MASK_LEVEL_ASSIGNS, mask_cfg.level_assign)(mask_cfg)


def mask_head_type(mask_cfg: MaskHeadConfig) -> str:
    """``model.mask_head.type``; the older switch ``boundary: true`` means ``type: boundary``."""
    head_type = str(mask_cfg.type)
    if bool(mask_cfg.boundary) and head_type not in ("fcn", "boundary"):
        raise LvisctlError(
            f"model.mask_head.boundary: true picks the boundary head, but model.mask_head.type is "
            f"{head_type!r}; set one of them"
        )
    return "boundary" if bool(mask_cfg.boundary) else head_type


@dataclass
class RoIParts:
    """What a RoI-head type builds its parts from: the model section (``mcfg``), the training categories,
    the FPN width and the test-time settings; ``cls_loss`` builds ``model.roi_heads.cls_loss``
    (``build.build_cls_loss``)."""

    mcfg: ModelConfig
    stats: CategoryStats
    channels: int
    test_cfg: InferenceConfig
    cls_loss: Callable[[RoIHeadsConfig, CategoryStats], ClassificationLoss]

    def sampler(self, fg_iou: float, bg_iou: float) -> ProposalSampler:
        rcfg = self.mcfg.roi_heads
        return ProposalSampler(
            fg_iou,
            bg_iou,
            int(rcfg.batch_size_per_image),
            float(rcfg.positive_fraction),
            float(rcfg.ignore_iou),
        )

    def box_branch(self, bbox_reg_weights: list[float], class_agnostic: bool = False) -> BoxBranch:
        rcfg, stats = self.mcfg.roi_heads, self.stats
        k = stats.num_classes
        cls_loss = self.cls_loss(rcfg, stats)
        head = BoxHead(
            self.channels,
            int(rcfg.pooler_resolution),
            int(rcfg.fc_dim),
            k,
            cls_loss,
            class_agnostic,
            num_convs=int(rcfg.get("box_convs", 0)),  # 4conv1fc heads of imported weights
        )
        weights = tuple(float(w) for w in bbox_reg_weights)
        if len(weights) != 4:
            raise LvisctlError(
                f"model.roi_heads: box-coder weights need 4 values, got {list(bbox_reg_weights)}"
            )
        extractor = build_box_extractor(rcfg, self.channels)
        branch = BoxBranch(extractor, head, cls_loss, k, weights, class_agnostic)
        branch.smooth_l1_beta = float(rcfg.smooth_l1_beta)
        return branch

    def mask_branch(self, *, mask_iou: bool, flow_in: bool = False) -> MaskBranch:
        """``model.mask_head``: the head of ``type``, the loss, the levels; with ``mask_iou`` a
        ``ScoredMaskBranch``. ``flow_in``: the head takes HTC's information flow from the previous head."""
        mcfg, k, channels = self.mcfg, self.stats.num_classes, self.channels
        rcfg, mask_cfg = mcfg.roi_heads, mcfg.mask_head
        head_cls = MASK_HEADS.get(mask_head_type(mask_cfg))
        mask_res = int(mask_cfg.pooler_resolution)
        scorer = MaskScorer.from_config(mcfg, k, channels) if mask_iou else None
        branch = MaskBranch(
            RoIAlignExtractor(mask_res, int(rcfg.sampling_ratio), bool(rcfg.aligned)),
            head_cls.from_config(mcfg, k, channels, flow_in=flow_in),
            build_mask_loss(mask_cfg),
            build_mask_levels(mask_cfg),
            mask_size=2 * mask_res,
        )
        return branch if scorer is None else ScoredMaskBranch(branch, scorer)

    def postprocess(self) -> DetectionPostprocess:
        test_cfg = self.test_cfg
        return DetectionPostprocess(
            float(test_cfg.score_thresh), float(test_cfg.nms_thresh), int(test_cfg.detections_per_image)
        )

    def cascade(self) -> RoIParts:
        """These parts with the cascade's own RoIAlign and SmoothL1 settings (``cascade_view``)."""
        return RoIParts(cascade_view(self.mcfg), self.stats, self.channels, self.test_cfg, self.cls_loss)

    def cascade_settings(self) -> tuple[list[float], list[float], list[list[float]]]:
        """Per stage: IoU threshold, loss weight, box-coder weights (``model.roi_heads.cascade``; one entry
        per stage in each list: checked by ``load_config``)."""
        ccfg = self.mcfg.roi_heads.cascade
        ious = [float(t) for t in ccfg.iou_thresholds]
        weights = [float(w) for w in ccfg.stage_loss_weights]
        reg = [list(w) for w in ccfg.bbox_reg_weights]
        return ious, weights, reg


def cascade_view(mcfg: ModelConfig) -> ModelConfig:
    """``mcfg`` with the cascade's own RoIAlign and SmoothL1 settings (``roi_heads.cascade.*``, mmdet's HTC
    values) in place of the standard head's (torchvision's), so every builder reads one place. A merged
    copy: the config itself is never changed."""
    c = mcfg.roi_heads.cascade
    own = {"sampling_ratio": c.sampling_ratio, "aligned": c.aligned, "smooth_l1_beta": c.smooth_l1_beta}
    return mcfg.replace({f"roi_heads.{key}": value for key, value in own.items()})
