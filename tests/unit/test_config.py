"""Config loading: _base_ inheritance, dotted overrides, validation against the schema."""

from __future__ import annotations

import pytest

from lvisctl.config import load_config, parse_overrides
from lvisctl.errors import LvisctlError


@pytest.fixture
def schema(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "seed: 0\nsolver:\n  base_lr: 0.02\n  steps: [16, 22]\n  amp: true\nmodel:\n  backbone: r50\n"
    )
    return base


def test_base_chain_and_overrides_merge_in_order(tmp_path, schema):
    mid = tmp_path / "mid.yaml"
    mid.write_text("_base_: base.yaml\nsolver:\n  base_lr: 0.01\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("_base_: mid.yaml\nmodel:\n  backbone: r18\n")
    cfg = load_config(exp, ["solver.steps=[1, 2]", "seed=7"], base=schema)
    assert cfg.solver.base_lr == 0.01
    assert cfg.solver.steps == [1, 2]
    assert cfg.model.backbone == "r18"
    assert cfg.seed == 7
    assert cfg.solver.amp is True


def test_unknown_key_suggests_the_close_one(tmp_path, schema):
    exp = tmp_path / "exp.yaml"
    exp.write_text("model:\n  bakbone: r18\n")
    with pytest.raises(
        LvisctlError, match=r"exp.yaml: unknown config key model.bakbone \(did you mean model.backbone\?\)"
    ):
        load_config(exp, base=schema)


def test_wrong_type_is_rejected_but_int_for_float_is_fine(schema):
    assert load_config(None, ["solver.base_lr=1"], base=schema).solver.base_lr == 1
    with pytest.raises(LvisctlError, match="solver.amp must be bool"):
        load_config(None, ["solver.amp=3"], base=schema)
    with pytest.raises(LvisctlError, match="expected key=value"):
        parse_overrides(["solver.amp"])


def test_bad_yaml_and_missing_file(tmp_path, schema):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(LvisctlError, match="bad.yaml: not valid YAML"):
        load_config(bad, base=schema)
    with pytest.raises(LvisctlError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", base=schema)


def test_repository_configs_all_load():
    from lvisctl.config import CONFIG_ROOT

    files = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if "_base_" not in p.parts)
    assert files, "no configs found"
    for path in files:
        cfg = load_config(path)
        assert "seed" in cfg


def test_leaf_without_its_section_points_to_it(schema):
    with pytest.raises(LvisctlError, match=r"unknown config key steps \(did you mean solver.steps\?\)"):
        load_config(None, ["steps=[1]"], base=schema)


# ------------------------------------------------------------------------ choices and value checks
def test_choice_typo_is_rejected_up_front_with_did_you_mean(tmp_path):
    with pytest.raises(
        LvisctlError, match=r"model.mask_head.loss: unknown value 'balancd' \(did you mean balanced\?"
    ):
        load_config(None, ["model.mask_head.loss=balancd"])
    exp = tmp_path / "exp.yaml"
    exp.write_text("_base_: stage1/r50_da.yaml\nsampler:\n  type: rsf\n")
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "r50_da.yaml").write_text("{}\n")
    with pytest.raises(
        LvisctlError, match=r"exp.yaml: sampler.type: unknown value 'rsf' \(did you mean rfs\?"
    ):
        load_config(exp)


def test_every_choice_default_is_allowed_and_described():
    from lvisctl.config.checks import lookup
    from lvisctl.config.choices import CHOICES

    base = load_config()
    for key, allowed in CHOICES.items():
        assert allowed and all(isinstance(d, str) and d for d in allowed.values()), key
        found, value = lookup(base, key)
        assert not found or value in allowed, key


def test_choice_tables_match_the_builders():
    from lvisctl.config.choices import choice_names
    from lvisctl.modeling.backbones import NORMS
    from lvisctl.modeling.mask_assign import BOX_RULES
    from lvisctl.registry import BACKBONES, CLS_LOSSES

    # the registry is the list of backbone names; every name's family builds itself from the config
    assert choice_names("model.backbone.name") == BACKBONES.names() and "tiny" in BACKBONES
    assert all(callable(BACKBONES.get(name).from_config) for name in BACKBONES.names())
    assert set(choice_names("model.backbone.norm")) == set(NORMS)
    assert set(choice_names("model.roi_heads.cls_loss")) == set(CLS_LOSSES.names())
    assert set(choice_names("model.mask_head.eq1_box_rule")) == set(BOX_RULES)


def test_every_sampler_and_device_choice_builds():
    import numpy as np

    from lvisctl.config.choices import choice_names
    from lvisctl.data.samplers import build_train_sampler
    from lvisctl.engine.distributed import pick_device

    for kind in choice_names("sampler.type"):
        assert build_train_sampler(load_config(None, [f"sampler.type={kind}"]), np.ones(4)) is not None
    for device in choice_names("device"):
        try:
            pick_device(device)
        except LvisctlError as err:  # cuda on a machine without a GPU: known, not "unknown value"
            assert "no CUDA GPU" in str(err)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("solver.base_lr=-0.01", "solver.base_lr must be > 0, got -0.01"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.batch_size=-1", "train.batch_size must be >= 1, got -1"),
        ("train.num_workers=-1", "train.num_workers must be >= 0, got -1"),
        ("augment.train_scales=[]", "augment.train_scales must be a non-empty list of positive pixel sizes"),
        ("solver.max_iter=-5", "solver.max_iter must be >= 0"),
        ("inference.scales=[0]", "inference.scales must be a non-empty list of positive pixel sizes"),
        ("augment.multi_scale_range=[1400, 400]", "augment.multi_scale_range must be \\[low, high\\]"),
    ],
)
def test_bad_values_are_one_line_each(override, message):
    with pytest.raises(LvisctlError, match=f"^command-line override: {message}") as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_bad_value_in_a_file_names_the_file(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(LvisctlError, match=r"exp.yaml: train.batch_size must be >= 1, got 0"):
        load_config(exp)


def test_exponent_floats_are_floats_in_files_and_overrides(tmp_path):
    assert load_config(None, ["solver.base_lr=1e-3"]).solver.base_lr == pytest.approx(1e-3)
    exp = tmp_path / "exp.yaml"
    exp.write_text("solver:\n  base_lr: 2e-2\n  weight_decay: 5E-5\n")
    cfg = load_config(exp)
    assert cfg.solver.base_lr == pytest.approx(0.02) and cfg.solver.weight_decay == pytest.approx(5e-5)
    assert load_config(None, ["data.train=1e3.json"]).data.train == "1e3.json"  # strings stay strings


def test_config_that_is_a_directory_is_one_line(tmp_path):
    with pytest.raises(LvisctlError, match="is a directory, not a config file"):
        load_config(tmp_path)


# ------------------------------------------------------------------------ packaged configs by name
def test_packaged_names_work_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = load_config("stage1/r50_da_eql_rfs")
    b = load_config("stage1/r50_da_eql_rfs.yaml")
    c = load_config("configs/stage1/r50_da_eql_rfs.yaml")  # the README's spelling, outside the checkout
    assert a == b == c and a.sampler.type == "rfs"
    with pytest.raises(LvisctlError, match=r"did you mean stage2/gs_hm\?"):
        load_config("stage2/gs_hmm")


def test_a_local_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "r50_da.yaml").write_text("_base_: []\nseed: 5\n")
    assert load_config("stage1/r50_da.yaml").seed == 5
    assert load_config("stage1/r50_da").seed == 0  # no such file here: the packaged one


def test_every_listed_config_says_what_it_reproduces():
    from lvisctl.config.catalog import list_configs

    entries = {e.name: e for e in list_configs()}
    assert {"stage1/r50_da_eql_rfs", "stage2/gs_hm", "stage2/gs_hm_head", "stage2/large/gs_hm"} <= set(
        entries
    )
    assert not any(n.startswith("_base_") or n == "base" or "/_" in n for n in entries)
    for name, entry in entries.items():
        # whole sentences, never cut mid-sentence at the header's line wrap
        assert len(entry.purpose) > 20 and entry.purpose.endswith("."), (name, entry.purpose)
    for name in ("stage1/r50_baseline", "stage1/r50_da", "stage1/r50_da_eql", "stage1/r50_da_eql_rfs"):
        assert entries[name].purpose.startswith("Table 1, row")
    for name in ("stage2/gs", "stage2/gs_hm", "stage2/ms"):
        assert entries[name].purpose.startswith("Table 2, row")


# ------------------------------------------------------------------------ one home for test settings
def test_model_test_keys_are_read_as_inference_keys(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  test:\n    detections_per_img: 100\n    nms_thresh: 0.6\n")
    cfg = load_config(old, ["model.test.score_thresh=0.05"])
    assert "test" not in cfg.model
    assert cfg.inference.detections_per_image == 100
    assert cfg.inference.nms_thresh == pytest.approx(0.6)
    assert cfg.inference.score_thresh == pytest.approx(0.05)


def test_saved_configs_are_upgraded():
    from lvisctl.config import upgrade_saved_config

    saved = load_config().to_dict()
    del saved["inference"]["nms_thresh"]
    saved["model"]["test"] = {"score_thresh": 0.01, "nms_thresh": 0.4, "detections_per_img": 50}
    cfg = upgrade_saved_config(saved)
    assert "test" not in cfg.model
    assert (cfg.inference.score_thresh, cfg.inference.nms_thresh, cfg.inference.detections_per_image) == (
        0.01,
        0.4,
        50,
    )


def test_model_post_processing_reads_the_inference_section():
    from lvisctl.modeling import build_model
    from tests.helpers.model import TINY, make_stats

    cfg = load_config(None, [*TINY, "inference.nms_thresh=0.3", "inference.detections_per_image=7"])
    heads = build_model(cfg, make_stats()).roi_heads
    assert (heads.nms_thresh, heads.detections_per_img) == (0.3, 7)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", "seed must be 0..4294967295, got -1"),
        ("seed=18446744073709551617", "seed must be 0..4294967295"),
        ("solver.steps=[22,16]", "solver.steps must be a list of positive numbers in increasing order"),
        ("model.roi_heads.eql_lambda=-0.1", "model.roi_heads.eql_lambda must be >= 0, got -0.1"),
        ('inference.tta.valid_ranges=["lol"]', "inference.tta.valid_ranges must be list (like the default"),
        ("inference.tta.valid_ranges=[[64,32]]", "with 0 <= lo < hi"),
    ],
)
def test_values_that_cannot_work_are_refused_at_load(override, message):
    """Issue 22 item 17: these loaded, then crashed train / paper-mode tta-infer (or meant nothing)."""
    with pytest.raises(LvisctlError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert (
        load_config(None, ["seed=4294967295", "inference.tta.valid_ranges=[[0,null],[16,64]]"]).seed
        == 4294967295
    )
