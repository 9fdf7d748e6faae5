"""Issue 21: configs that name a source follow it; configs that read the paper say so (resolved values)."""

from __future__ import annotations

import pytest

from lvisctl.config import load_config

# BAGS (FishYuLi/BalancedGroupSoftmax @ 90e04fd) configs/bags/gs_mask_rcnn_r50_fpn_1x_lvis.py and
# gs_htc_dconv_c3-c5_mstrain_400_1400_x101_64x4d_fpn_20e_lvis.py: optimizer, optimizer_config, lr_config,
# total_epochs, train_pipeline, data.imgs_per_gpu.
BAGS_SOLVER = {"momentum": 0.9, "weight_decay": 1e-4, "epochs": 12, "steps": [8, 11], "warmup_iters": 500}


def _solver(cfg) -> dict:
    return {k: (list(v) if k == "steps" else v) for k, v in cfg.solver.to_dict().items() if k in BAGS_SOLVER}


@pytest.mark.parametrize(
    "name, lr, ref_batch",
    [
        ("stage2/finetune_bags", 0.01, 16),
        ("stage2/large/finetune_bags", 0.01, 16),
        ("stage2/htc_finetune_bags", 0.005, 8),
        ("stage2/large/htc_finetune_bags", 0.005, 8),
    ],
)
def test_finetune_bags_is_bags_tunefc_recipe(name, lr, ref_batch):
    cfg = load_config(name)
    assert _solver(cfg) == BAGS_SOLVER
    assert (cfg.solver.base_lr, cfg.solver.ref_batch) == (lr, ref_batch)
    assert cfg.solver.warmup_factor == pytest.approx(1 / 3) and cfg.solver.clip_grad_norm == 35.0
    assert cfg.sampler.type == "uniform"  # no RFS
    aug = cfg.augment
    assert (aug.mosaic.prob, aug.rotate.prob, aug.instaboost.prob, aug.hflip_prob) == (0.0, 0.0, 0.0, 0.5)
    assert cfg.model.roi_heads.cls_loss == "bags"
    if name.startswith("stage2/large/"):  # after a 400-1400 stage 1, as BAGS's HTC recipe
        assert aug.multi_scale and list(aug.multi_scale_range) == [400, 1400]
    else:  # 1333x800 + flip, as BAGS's Mask R-CNN recipe
        assert not aug.multi_scale and list(aug.train_scales) == [800] and aug.max_size == 1333
    if "htc" in name:
        assert cfg.model.roi_heads.type == "htc" and cfg.train.batch_size == 1  # imgs_per_gpu=1


def test_demo_finetune_bags_carries_the_recipe_at_demo_size():
    cfg = load_config("demo/finetune_bags")
    assert cfg.sampler.type == "uniform" and cfg.solver.clip_grad_norm == 35.0
    assert cfg.solver.warmup_factor == pytest.approx(1 / 3)
    assert (cfg.solver.epochs, list(cfg.solver.steps)) == (12, [8, 11])  # scaled to max_iter
    # BAGS's 12 epochs over the demo preset's training images (a fresh classifier needs them: 200 iterations
    # lost AP on the demo, benchmarks/longtail_ablation.py)
    from lvisctl.data.synth import PRESETS

    assert cfg.solver.max_iter * cfg.train.batch_size == 12 * PRESETS["demo"].train_images
    assert (cfg.augment.mosaic.prob, cfg.augment.rotate.prob, list(cfg.augment.train_scales)) == (
        0.0,
        0.0,
        [128],
    )


HTC_LARGE = ["finetune_bags", "gs", "gs_hm", "gs_hm_head", "ms", "gs_hm_ms"]


@pytest.mark.parametrize("row", HTC_LARGE)
def test_large_htc_stage2_builds_htc_heads_and_keeps_400_1400(row):
    htc, mask_rcnn = load_config(f"stage2/large/htc_{row}"), load_config(f"stage2/large/{row}")
    assert htc.model.roi_heads.type == "htc" and mask_rcnn.model.roi_heads.type == "standard"
    for cfg in (htc, mask_rcnn):
        assert cfg.augment.multi_scale and list(cfg.augment.multi_scale_range) == [400, 1400]
    if row != "finetune_bags":
        assert (htc.solver.epochs, list(htc.solver.steps), htc.solver.weight_decay) == (15, [11, 14], 5e-5)


@pytest.mark.parametrize("name", ["stage2/large/htc_gs", "stage2/large/htc_gs_hm_ms", "stage2/large/htc_ms"])
def test_large_htc_stage2_has_the_htc_stage1_layout(name):
    """The HTC stage-1 model's RoI-head tensors exist in the stage-2 model (Mask R-CNN heads had none)."""
    from lvisctl.modeling import build_model
    from tests.helpers.model import TINY, make_stats

    no_dcn = [*TINY, "model.backbone.dcn_stages=[]"]  # the tiny test trunk has no DCN
    stage1 = build_model(load_config("stage1/htc_s101_da_eql_rfs_tricks", no_dcn), make_stats()).state_dict()
    stage2 = build_model(load_config(name, no_dcn), make_stats()).state_dict()
    kept = [k for k in stage1 if k.startswith("roi_heads.") and ".cls_score." not in k]
    assert kept and all(k in stage2 and stage2[k].shape == stage1[k].shape for k in kept)


def test_htc_more_computation_on_head():
    for name in ("stage2/htc_gs_hm_head", "stage2/large/htc_gs_hm_head"):
        m = load_config(name).model
        assert (m.roi_heads.type, m.mask_head.num_convs, m.roi_heads.roi_pool) == ("htc", 7, "deform")


@pytest.mark.parametrize(
    "name, backbone, mask_iou",
    [
        ("stage1/htc_s101_da_eql_rfs_tricks_ms", "resnest101", True),  # Table 2 row 3
        ("stage1/htc_s200_da_eql_rfs_tricks_st_ib_ms", "resnest200", True),  # row 4
        ("stage1/htc_s269_da_eql_rfs_tricks_st_ib_ms", "resnest269", True),  # row 5
        ("stage1/htc_s269_da_eql_rfs_tricks_st_ib", "resnest269", False),  # row 8's stage 1
    ],
)
def test_table2_stage1_rows(name, backbone, mask_iou):
    cfg = load_config(name)
    assert (cfg.model.backbone.name, cfg.model.mask_head.mask_iou, cfg.model.roi_heads.type) == (
        backbone,
        mask_iou,
        "htc",
    )
    if backbone != "resnest101":  # the dagger recipe: LVIS ignore regions + InstaBoost + ST
        assert cfg.data.pseudo_labels == "latest" and cfg.augment.instaboost.prob > 0
        assert cfg.data.extra_images == "latest"


@pytest.mark.parametrize(
    "name, trained",
    [
        ("stage2/ms", "roi_heads.mask.scorer.head."),
        ("stage2/htc_ms", "roi_heads.stages.2.mask.scorer.head."),
        ("stage2/large/htc_ms", "roi_heads.stages.2.mask.scorer.head."),
    ],
)
def test_stage2_ms_trains_the_mask_iou_head_only(name, trained):
    from lvisctl.engine.trainer import freeze_modules
    from lvisctl.modeling import build_model
    from tests.helpers.model import TINY, make_stats

    cfg = load_config(name, TINY)
    model = build_model(cfg, make_stats())
    freeze_modules(model, list(cfg.train.freeze))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(trained) for n in trainable)


def test_configs_list_descriptions_are_whole_sentences(tmp_path):
    from lvisctl.config.catalog import list_configs, purpose_of

    for entry in list_configs():
        assert entry.purpose.endswith("."), (entry.name, entry.purpose)
    cut = tmp_path / "cut.yaml"
    cut.write_text(
        "# Table 1, last row: HTC + tricks. Paper:\n# 33.2 AP. The best model.\n# More detail.\nseed: 0\n"
    )
    assert purpose_of(cut) == "Table 1, last row: HTC + tricks. Paper: 33.2 AP. The best model."
