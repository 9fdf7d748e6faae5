"""The packaged configs say what they reproduce, and are what they say (paper Tables 1 and 2)."""

from __future__ import annotations

import pytest

from lvisctl.config import load_config


def test_hm_is_the_table_2_caption_and_the_heavier_head_is_its_own_row():
    hm = load_config("stage2/gs_hm").model
    # HM = proposal assignment + balanced mask loss + boundary supervision (Table 2's caption) ...
    assert (hm.mask_head.level_assign, hm.mask_head.loss, hm.mask_head.boundary) == ("eq1", "balanced", True)
    # ... and nothing of "more computation on head"
    assert (hm.mask_head.num_convs, hm.roi_heads.roi_pool) == (4, "align")
    head = load_config("stage2/gs_hm_head").model
    assert (head.mask_head.num_convs, head.roi_heads.roi_pool) == (7, "deform")
    assert head.mask_head.level_assign == "eq1" and head.roi_heads.cls_loss == "bags"
    ms = load_config("stage2/gs_hm_ms").model
    assert ms.mask_head.mask_iou and ms.mask_head.num_convs == 4


def test_demo_stage2_keeps_the_model_its_readme_numbers_were_measured_with():
    demo = load_config("demo/stage2").model
    assert (demo.mask_head.num_convs, demo.roi_heads.roi_pool, demo.mask_head.boundary) == (7, "deform", True)
    demo_ms = load_config("demo/stage2_ms").model
    assert demo_ms.mask_head.mask_iou and demo_ms.mask_head.num_convs == 7


@pytest.mark.parametrize("name", ["stage2/finetune_bags", "demo/finetune_bags", "stage2/large/finetune_bags"])
def test_bags_tunefc_trains_only_the_classifier_layer(name):
    from lvisctl.engine.trainer import freeze_modules
    from lvisctl.modeling import build_model
    from tests.helpers.model import TINY, make_stats

    cfg = load_config(name, TINY)
    model = build_model(cfg, make_stats())
    freeze_modules(model, list(cfg.train.freeze))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "roi_heads.box.head.predictor.cls_score.weight",
        "roi_heads.box.head.predictor.cls_score.bias",
    }


@pytest.mark.parametrize(
    "row",
    [
        "gs",
        "gs_hm",
        "gs_hm_head",
        "gs_hm_ms",
        "ms",
        "htc_gs",
        "htc_gs_hm",
        "htc_gs_hm_head",
        "htc_gs_hm_ms",
        "htc_ms",
    ],
)
def test_large_model_stage2_variants_use_the_large_schedule(row):
    small, large = load_config(f"stage2/{row}"), load_config(f"stage2/large/{row}")
    assert (small.solver.epochs, list(small.solver.steps), small.solver.weight_decay) == (24, [16, 22], 1e-4)
    assert (large.solver.epochs, list(large.solver.steps), large.solver.weight_decay) == (15, [11, 14], 5e-5)
    assert large.model == small.model and large.train == small.train


def test_s101_multi_scale_reaches_its_range_on_lvis_sized_images():
    from lvisctl.data.transforms.scale_jitter import short_side_size

    for name in (
        "stage1/s101_da_eql_rfs",
        "stage1/s101_da_eql_rfs_tricks",
        "stage1/s101_da_eql_rfs_tricks_st",
    ):
        aug = load_config(name).augment
        low, high = aug.multi_scale_range
        assert aug.multi_scale and (low, high) == (400, 1400) and aug.max_size >= 1600
        for h, w in ((480, 640), (640, 480)):  # the common LVIS/COCO image sizes
            assert min(short_side_size(h, w, high, aug.max_size)) == high
            assert min(short_side_size(h, w, low, aug.max_size)) == low
