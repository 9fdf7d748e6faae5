"""Issue 23 item 3: values that cannot build a model or run are refused by load_config, before any data or
model loads: one line naming the file (or the override) and the key. One hand-written bad config each."""

from __future__ import annotations

import pytest

from lvisctl.config import load_config
from lvisctl.errors import LvisctlError

CASCADE_REG = (
    "model:\n  roi_heads:\n    cascade:\n      bbox_reg_weights: [[10, 10, 5, 5], [20, 20, 10, 10], {}]\n"
)
BAD_CONFIGS = {
    # BAGS bins (the builder's _bin_edges used to refuse these after the data had loaded)
    "bags_edges_decreasing": (
        "model:\n  roi_heads:\n    cls_loss: bags\n    bags_bin_edges: [100, 10]\n",
        "model.roi_heads.bags_bin_edges must be a non-empty list of strictly increasing positive integer",
    ),
    "bags_edges_zero": ("model:\n  roi_heads:\n    bags_bin_edges: [0, 10]\n", "bags_bin_edges must be"),
    "bags_edges_empty": ("model:\n  roi_heads:\n    bags_bin_edges: []\n", "bags_bin_edges must be"),
    "bags_edges_fraction": (
        "model:\n  roi_heads:\n    bags_bin_edges: [1.5, 10]\n",
        "bags_bin_edges must be",
    ),
    "bags_edges_equal": ("model:\n  roi_heads:\n    bags_bin_edges: [10, 10]\n", "bags_bin_edges must be"),
    # cascade: one entry per stage in each per-stage list
    "cascade_two_weights": (
        "model:\n  roi_heads:\n    type: htc\n    cascade:\n      stage_loss_weights: [1.0, 0.5]\n",
        "model.roi_heads.cascade: iou_thresholds, stage_loss_weights and bbox_reg_weights need one entry "
        "per stage, got 3, 2 and 3",
    ),
    "cascade_four_ious": (
        "model:\n  roi_heads:\n    cascade:\n      iou_thresholds: [0.5, 0.6, 0.7, 0.8]\n",
        "need one entry per stage, got 4, 3 and 3",
    ),
    "cascade_no_stage": (
        "model:\n  roi_heads:\n    cascade:\n      iou_thresholds: []\n      stage_loss_weights: []\n"
        "      bbox_reg_weights: []\n",
        "model.roi_heads.cascade.iou_thresholds must be a non-empty list of numbers in (0, 1)",
    ),
    "cascade_iou_one": (
        "model:\n  roi_heads:\n    cascade:\n      iou_thresholds: [0.5, 0.6, 1.2]\n",
        "model.roi_heads.cascade.iou_thresholds must be a non-empty list of numbers in (0, 1), got",
    ),
    # box coders: (wx, wy, ww, wh)
    "box_weights_three": (
        "model:\n  roi_heads:\n    bbox_reg_weights: [10.0, 10.0, 5.0]\n",
        "model.roi_heads.bbox_reg_weights must be 4 positive numbers (wx, wy, ww, wh), got [10.0, 10.0, 5.0]",
    ),
    "box_weights_zero": (
        "model:\n  roi_heads:\n    bbox_reg_weights: [10.0, 0, 5.0, 5.0]\n",
        "model.roi_heads.bbox_reg_weights must be 4 positive numbers",
    ),
    "cascade_box_weights_three": (
        CASCADE_REG.format("[30, 30, 15]"),
        # a stage with 3 values: the schema's element check (the default's inner lists have 4)
        "model.roi_heads.cascade.bbox_reg_weights must be list",
    ),
    "cascade_box_weights_negative": (
        CASCADE_REG.format("[30, 30, 15, -1]"),
        "model.roi_heads.cascade.bbox_reg_weights must be one list of 4 positive numbers (wx, wy, ww, wh) "
        "per stage",
    ),
    # anchors: one size per FPN level P2..P6
    "anchor_sizes_four": (
        "model:\n  rpn:\n    anchor_sizes: [32, 64, 128, 256]\n",
        "model.rpn.anchor_sizes must be 5 positive sizes, one per FPN level P2..P6, got [32, 64, 128, 256]",
    ),
    "anchor_sizes_zero": (
        "model:\n  rpn:\n    anchor_sizes: [0, 64, 128, 256, 512]\n",
        "model.rpn.anchor_sizes must be 5 positive sizes",
    ),
    # save_best: a metric the evaluation reports, and an evaluation to take it from
    "save_best_unknown_metric": (
        "train:\n  eval_period: 100\n  save_best: segm_APx\n",
        "train.save_best must be '' (off) or <segm|bbox>_<AP|AP50|AP75|APs|APm|APl|APr|APc|APf>, got "
        "'segm_APx'",
    ),
    "save_best_without_evaluation": (
        "train:\n  save_best: segm_AP\n",
        "train.save_best needs train.eval_period (iterations or 'epoch')",
    ),
    "eval_period_word": (
        "train:\n  eval_period: weekly\n",
        "train.eval_period must be a number of iterations or 'epoch' (null or 0 = off), got 'weekly'",
    ),
    # ranges
    "rpn_bg_above_fg": (
        "model:\n  rpn:\n    bg_iou_thresh: 0.8\n",
        "model.rpn.bg_iou_thresh (0.8) must be <= model.rpn.fg_iou_thresh (0.7)",
    ),
    "roi_bg_above_fg": (
        "model:\n  roi_heads:\n    fg_iou_thresh: 0.4\n",
        "model.roi_heads.bg_iou_thresh (0.5) must be <= model.roi_heads.fg_iou_thresh (0.4)",
    ),
    "positive_fraction": (
        "model:\n  roi_heads:\n    positive_fraction: 1.5\n",
        "model.roi_heads.positive_fraction must be in (0, 1], got 1.5",
    ),
    "pixel_std": ("model:\n  pixel_std: [0.2, 0.2]\n", "model.pixel_std must be 3 positive numbers"),
    "mask_convs": (
        "model:\n  mask_head:\n    num_convs: -1\n",
        "model.mask_head.num_convs must be >= 0, got -1",
    ),
    "batch_size": ("train:\n  batch_size: 0\n", "train.batch_size must be >= 1, got 0"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_naming_the_file_and_key(tmp_path, name):
    text, message = BAD_CONFIGS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(LvisctlError) as err:
        load_config(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path}: "), line
    assert message in line, line


def test_overrides_are_named_as_the_source():
    with pytest.raises(
        LvisctlError, match=r"^command-line override: train.save_best needs train.eval_period"
    ):
        load_config(None, ["train.save_best=bbox_APr"])
    with pytest.raises(
        LvisctlError, match=r"^command-line override: model.roi_heads.cascade: iou_thresholds"
    ):
        load_config(None, ["model.roi_heads.cascade.iou_thresholds=[0.5]"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.save_best=segm_AP", "train.eval_period=epoch"],
        ["train.save_best=bbox_APr", "train.eval_period=100"],
        ["train.eval_period=0"],
        ["model.roi_heads.bags_bin_edges=[5, 50, 500, 5000]"],
        ["model.roi_heads.cascade.iou_thresholds=[0.5, 0.6]",
         "model.roi_heads.cascade.stage_loss_weights=[1, 0.5]",
         "model.roi_heads.cascade.bbox_reg_weights=[[10, 10, 5, 5], [20, 20, 10, 10]]"],
        ["model.rpn.anchor_sizes=[8, 16, 32, 64, 128]", "model.rpn.bg_iou_thresh=0.7"],
    ],
)  # fmt: skip
def test_consistent_values_load(overrides):
    assert load_config(None, overrides) is not None


def test_the_model_builds_what_the_checks_let_through():
    """The builders keep their behaviour: the BAGS bins and the cascade's stages as configured."""
    from lvisctl.losses.group_softmax import checked_bin_edges
    from lvisctl.modeling.roi_parts import RoIParts

    cfg = load_config(None, ["model.roi_heads.bags_bin_edges=[5, 50]"])
    assert checked_bin_edges(cfg.model.roi_heads.bags_bin_edges) == [5, 50]
    ious, weights, reg = RoIParts(cfg.model, None, 0, None, None).cascade_settings()
    assert (ious, weights, reg[2]) == ([0.5, 0.6, 0.7], [1.0, 0.5, 0.25], [30.0, 30.0, 15.0, 15.0])
