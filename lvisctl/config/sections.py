"""The typed config: one frozen dataclass per section of ``configs/_base_/*.yaml``.

The YAML files stay the documentation and the only place of the defaults (each key with its default and
a comment); these classes only name the keys and their types, so builders can take ``RoIHeadsConfig``
instead of ``Any`` and a type checker sees ``cfg.model.roi_heads.cls_loss`` is a ``str``. The fields are
in the YAML's order; ``tests/unit/test_config_sections.py`` checks that they are exactly the YAML's keys
and that every default has the declared type, so adding a key means adding its line here too.

Lists are read-only (``FrozenList``, a list that refuses to change), hence ``Sequence``; a ``float`` key
may hold an int (``solver.base_lr: 1``), as YAML and the schema check allow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from lvisctl.config.frozen import Section


# ------------------------------------------------------------------------------ runtime.yaml
@dataclass(frozen=True, eq=False)
class RuntimeConfig(Section):
    KEY: ClassVar[str] = "runtime"
    dist_timeout_min: float
    cudnn_benchmark: str


# ------------------------------------------------------------------------------ data.yaml
@dataclass(frozen=True, eq=False)
class DataConfig(Section):
    KEY: ClassVar[str] = "data"
    root: str
    train: str
    val: str
    test_info: str
    unlabeled: str
    image_root: str
    check_images: bool
    pseudo_labels: str
    extra_images: str
    extra_per_epoch: int
    extra_loss_weight: float
    extra_image_root: str


@dataclass(frozen=True, eq=False)
class MosaicConfig(Section):
    KEY: ClassVar[str] = "augment.mosaic"
    prob: float
    size: int
    rfs_weighted: bool


@dataclass(frozen=True, eq=False)
class RotateConfig(Section):
    KEY: ClassVar[str] = "augment.rotate"
    prob: float
    max_angle: float
    expand: bool


@dataclass(frozen=True, eq=False)
class InstaBoostConfig(Section):
    KEY: ClassVar[str] = "augment.instaboost"
    prob: float
    scale: Sequence[float]
    shift: float
    max_angle: float
    color_prob: float


@dataclass(frozen=True, eq=False)
class AugmentConfig(Section):
    KEY: ClassVar[str] = "augment"
    box_from_mask: bool
    train_scales: Sequence[int]
    multi_scale: bool
    multi_scale_range: Sequence[int]
    max_size: int
    hflip_prob: float
    mosaic: MosaicConfig
    rotate: RotateConfig
    instaboost: InstaBoostConfig


@dataclass(frozen=True, eq=False)
class SamplerConfig(Section):
    KEY: ClassVar[str] = "sampler"
    type: str
    rfs_threshold: float
    shuffle: bool


# ------------------------------------------------------------------------------ model.yaml
@dataclass(frozen=True, eq=False)
class BackboneConfig(Section):
    KEY: ClassVar[str] = "model.backbone"
    name: str
    weights: str
    norm: str
    freeze_at: int
    dcn_stages: Sequence[int]
    tiny_width: int
    stride_in_1x1: bool


@dataclass(frozen=True, eq=False)
class FPNConfig(Section):
    KEY: ClassVar[str] = "model.fpn"
    out_channels: int


@dataclass(frozen=True, eq=False)
class RPNConfig(Section):
    KEY: ClassVar[str] = "model.rpn"
    anchor_sizes: Sequence[int]
    aspect_ratios: Sequence[float]
    anchor_round: bool
    head_convs: int
    pre_nms_top_n_train: int
    post_nms_top_n_train: int
    pre_nms_top_n_test: int
    post_nms_top_n_test: int
    nms_thresh: float
    fg_iou_thresh: float
    bg_iou_thresh: float
    batch_size_per_image: int
    positive_fraction: float
    ignore_iof_thresh: float


@dataclass(frozen=True, eq=False)
class CascadeConfig(Section):
    KEY: ClassVar[str] = "model.roi_heads.cascade"
    iou_thresholds: Sequence[float]
    stage_loss_weights: Sequence[float]
    bbox_reg_weights: Sequence[Sequence[float]]
    class_agnostic: bool
    sampling_ratio: int
    aligned: bool
    smooth_l1_beta: float
    test_mask: str


@dataclass(frozen=True, eq=False)
class RoIHeadsConfig(Section):
    KEY: ClassVar[str] = "model.roi_heads"
    type: str
    cls_loss: str
    cls_loss_args: Mapping[str, Any]  # the loss's keyword arguments (checked against it at load)
    eql_lambda: float
    bags_bin_edges: Sequence[int]
    bags_others_ratio: float
    roi_pool: str
    deform_gamma: float
    deform_hidden_channels: int
    pooler_resolution: int
    sampling_ratio: int
    aligned: bool
    smooth_l1_beta: float
    fc_dim: int
    box_convs: int
    fg_iou_thresh: float
    bg_iou_thresh: float
    batch_size_per_image: int
    positive_fraction: float
    bbox_reg_weights: Sequence[float]
    ignore_iou: float
    cascade: CascadeConfig


@dataclass(frozen=True, eq=False)
class MaskHeadConfig(Section):
    KEY: ClassVar[str] = "model.mask_head"
    type: str
    num_convs: int
    conv_dim: int
    pooler_resolution: int
    level_assign: str
    eq1_box_rule: str
    eq1_single_pass: bool
    loss: str
    balanced_lambda: float
    balanced_eps: float
    boundary: bool
    boundary_loss_weight: float
    mask_iou: bool
    mask_iou_loss_weight: float


@dataclass(frozen=True, eq=False)
class ModelConfig(Section):
    KEY: ClassVar[str] = "model"
    pixel_mean: Sequence[float]
    pixel_std: Sequence[float]
    size_divisible: int
    backbone: BackboneConfig
    fpn: FPNConfig
    rpn: RPNConfig
    roi_heads: RoIHeadsConfig
    mask_head: MaskHeadConfig


# ------------------------------------------------------------------------------ solver.yaml
@dataclass(frozen=True, eq=False)
class SolverConfig(Section):
    KEY: ClassVar[str] = "solver"
    base_lr: float
    ref_batch: int
    momentum: float
    weight_decay: float
    epochs: int
    steps: Sequence[float]
    gamma: float
    max_iter: int
    step_iters: Sequence[int]
    warmup_iters: int
    warmup_factor: float
    clip_grad_norm: float


@dataclass(frozen=True, eq=False)
class TrainConfig(Section):
    KEY: ClassVar[str] = "train"
    batch_size: int
    num_workers: int
    checkpoint_period: int
    keep_checkpoints: int
    log_period: int
    init_from: str
    freeze: Sequence[str]
    deterministic: bool
    sync_bn: bool
    find_unused_parameters: bool
    init_allow_partial: bool
    eval_period: int | str | None  # N iterations, "epoch", or null / 0 (off)
    eval_images: int
    save_best: str
    hooks: Sequence[str]  # extra hooks by registered name (lvisctl.registry.HOOKS)


@dataclass(frozen=True, eq=False)
class LogConfig(Section):
    KEY: ClassVar[str] = "log"
    image_period: int
    num_images: int
    image_score_thresh: float
    loss_plot_scale: str


# ------------------------------------------------------------------------------ inference.yaml
@dataclass(frozen=True, eq=False)
class TTAConfig(Section):
    KEY: ClassVar[str] = "inference.tta"
    mode: str
    scales: Sequence[int]
    max_size: int
    flip: bool
    augmentations: Sequence[str]
    survivor_masks: bool
    steps: Sequence[str]
    range_filter: bool
    valid_ranges: (
        str | Sequence[Sequence[float | str | None]]
    )  # "auto", or [lo, hi] pairs (null/inf: no limit)
    rare_boost: bool
    rare_factor: float
    common_factor: float
    soft_nms: bool
    nms_iou: float
    soft_nms_method: str
    soft_nms_sigma: float
    soft_nms_iou: float
    soft_nms_score_thresh: float
    mask_from_best_scale: bool
    thin_ratio: float
    mask_box_size: int
    mask_match_iou: float


@dataclass(frozen=True, eq=False)
class EnsembleConfig(Section):
    KEY: ClassVar[str] = "inference.ensemble"
    method: str
    iou: float
    skip_score: float
    weights: Sequence[float]


@dataclass(frozen=True, eq=False)
class InferenceConfig(Section):
    KEY: ClassVar[str] = "inference"
    scales: Sequence[int]
    max_size: int
    batch_size: int
    num_workers: int
    detections_per_image: int
    score_thresh: float
    nms_thresh: float
    mask_thresh: float
    merge_iou: float
    chunk_size: int
    tta: TTAConfig
    ensemble: EnsembleConfig


@dataclass(frozen=True, eq=False)
class PseudoLabelConfig(Section):
    KEY: ClassVar[str] = "pseudolabel"
    category_filter: bool


# ------------------------------------------------------------------------------ the whole config
@dataclass(frozen=True, eq=False)
class Config(Section):
    """A resolved, validated config (``load_config``): ``configs/base.yaml`` merged with an experiment file
    and overrides. Read-only; ``cfg.replace({"key.sub": value})`` gives a changed copy."""

    KEY: ClassVar[str] = ""
    seed: int
    device: str
    amp: bool
    runtime: RuntimeConfig
    data: DataConfig
    augment: AugmentConfig
    sampler: SamplerConfig
    model: ModelConfig
    solver: SolverConfig
    train: TrainConfig
    log: LogConfig
    inference: InferenceConfig
    pseudolabel: PseudoLabelConfig


SECTIONS: tuple[type[Section], ...] = (
    Config,
    RuntimeConfig,
    DataConfig,
    AugmentConfig,
    MosaicConfig,
    RotateConfig,
    InstaBoostConfig,
    SamplerConfig,
    ModelConfig,
    BackboneConfig,
    FPNConfig,
    RPNConfig,
    RoIHeadsConfig,
    CascadeConfig,
    MaskHeadConfig,
    SolverConfig,
    TrainConfig,
    LogConfig,
    InferenceConfig,
    TTAConfig,
    EnsembleConfig,
    PseudoLabelConfig,
)
