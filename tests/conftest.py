"""Test tiers and the fixtures every test file may use.

``make test`` runs everything; ``make test-fast`` (``pytest -m "not slow"``) is the inner loop. What is
``slow`` is decided here, by rule, so a new test file needs no marker of its own:

- every test under ``tests/integration/`` and ``tests/e2e/`` (they train, start processes or run the
  whole CLI on real models);
- every test that asks for a fixture in ``SLOW_FIXTURES`` (they run commands on real models);
- the unit tests in ``SLOW_UNIT`` (measured: several seconds each on a 2-core machine).

Mark a unit test ``@pytest.mark.slow`` in its file when it is slow for another reason.
"""

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["tests.helpers.cli", "tests.helpers.fixtures"]

SLOW_DIRS = ("integration", "e2e")
# a run with real tiny checkpoints: the test runs whole commands on a real model
SLOW_FIXTURES = frozenset({"setup"})
# Unit tests measured at 1 s or more each (pytest --durations=0 on tests/unit, 2 busy CPU cores): whole
# files by name, single tests by "file::test" (every parametrized case of it).
SLOW_UNIT = frozenset(
    {
        # importing full-size mmdet / detectron2 state dicts (R50-X101), tens of seconds each
        "test_checkpoint_import.py",
        "test_checkpoint_import_safety.py",
        "test_numba_cache.py",  # fresh interpreters compiling the kernels
        "test_train_speed_bench.py",  # runs the benchmark's rows
        "test_backbones.py::test_resnest_dcn_replaces_the_split_attention_conv_and_starts_as_plain",
        "test_cascade_heads.py::test_htc_configs_load_and_the_stage2_ones_build",
        "test_cascade_heads.py::test_htc_trains_every_stage_with_its_loss_weight",
        "test_cascade_heads.py::test_test_time_scores_are_the_mean_of_the_stages_scores",
        "test_config.py::test_repository_configs_all_load",
        "test_dataset.py::test_dataloader_workers_do_not_change_samples",
        "test_dataset.py::test_samples_depend_only_on_the_key",
        "test_distributed_setup.py::test_resume_without_config_joins_with_the_saved_device",
        "test_empty_masks.py::test_checkpoint_ensemble_keeps_fused_spares_while_members_keep_their_caps",
        "test_empty_masks.py::test_ensemble_drops_empty_input_masks_before_the_cap",
        "test_empty_masks.py::test_paper_tta_merge_refills_the_slots_of_masks_that_paste_empty",
        "test_empty_masks.py::test_real_model_refills_the_slots_of_empty_masks",
        "test_empty_masks.py::test_without_enough_spares_every_non_empty_candidate_is_written",
        "test_levels_analysis.py::test_hm_preset_moves_a_stated_fraction_the_demo_preset_none",
        "test_lvis_store.py::test_store_records_equal_load_lvis",
        "test_lvis_store.py::test_train_worker_init_maps_large_buffers",
        "test_lvis_store.py::test_train_workers_freeze_what_they_inherit",
        "test_lvis_store.py::test_training_samples_are_identical_from_the_store",
        "test_model_core.py::test_backbone_weights_file_errors",
        "test_model_core.py::test_backbone_weights_load_before_freezing",
        "test_predictor.py::test_real_model_roi_masks_paste_to_its_default_output_and_predictor_rles_are_unchanged",
        "test_readme.py::test_readme_block",  # runs README's command blocks
        "test_remembered_data.py::test_data_register_records_checks_and_keeps",
        "test_runner.py::test_two_gloo_processes_match_one_process_and_resume",
        "test_stage2_model.py::test_all_switches_together_train_and_predict",
        "test_stage2_model.py::test_mask_scoring_rescores_masks_only_boxes_keep_the_cls_score",
        "test_stage2_model.py::test_stage2_configs_build_and_freeze_backbone_neck_rpn",
        "test_synth.py::test_demo_preset_long_tail",
        "test_tta.py::test_soft_nms_keeps_what_ensemble_boxes_keeps",
        "test_weight_sources.py::test_paper_stage1_configs_name_their_imagenet_weights",
        "test_weight_sources.py::test_timm_tag_loads_the_hugging_face_cache_entry",
        "test_weight_sources.py::test_torchvision_name_loads_the_cached_imagenet_file",
    }
)


def _slow(item: pytest.Item) -> bool:
    parts = item.path.relative_to(item.config.rootpath).parts
    if len(parts) > 1 and parts[0] == "tests" and parts[1] in SLOW_DIRS:
        return True
    if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    name = item.path.name
    test = f"{name}::{item.name.split('[')[0]}"
    return name in SLOW_UNIT or test in SLOW_UNIT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        if _slow(item) and item.get_closest_marker("slow") is None:
            item.add_marker(slow)
