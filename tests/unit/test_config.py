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
