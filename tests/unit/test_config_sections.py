"""Issue 23 item 3: the config is one frozen, typed dataclass per section, built once by load_config.

The YAML files stay the only place of the defaults; these tests hold the dataclasses to them (same keys,
same order, every default and every packaged config's value of the declared type) and check that nothing
can change a loaded config except ``replace``, which checks what it changes as an override is checked.
"""

from __future__ import annotations

import ast
import copy
import operator
import pickle
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import FrozenInstanceError, fields
from pathlib import Path
from typing import Any

import pytest

from lvisctl.config import (
    CONFIG_ROOT,
    Config,
    ConfigNode,
    FrozenList,
    ModelConfig,
    RoIHeadsConfig,
    Section,
    TTAConfig,
    dotted,
    load_config,
    upgrade_saved_config,
)
from lvisctl.config.frozen import _field_types
from lvisctl.config.schema import base_schema
from lvisctl.config.sections import SECTIONS
from lvisctl.errors import LvisctlError


def _conforms(value: Any, kind: Any) -> bool:
    """Whether a plain YAML value has the declared type (ints count as floats, as the schema allows)."""
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, k) for k in typing.get_args(kind))
    if origin is not None and issubclass(origin, Mapping):
        return isinstance(value, Mapping)
    if origin is not None and issubclass(origin, Sequence):
        (inner,) = typing.get_args(kind)
        return isinstance(value, list) and all(_conforms(v, inner) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(kind, type) and issubclass(kind, Section):
        return isinstance(value, Mapping)
    return isinstance(value, kind)


def _section_of(tree: Mapping[str, Any], cls: type[Section]) -> Mapping[str, Any]:
    return dotted.get(tree, cls.KEY) if cls.KEY else tree


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.KEY or "root")
def test_sections_declare_exactly_the_yaml_keys_in_order_with_their_types(cls):
    schema = _section_of(base_schema(), cls)
    declared = list(_field_types(cls))
    missing = [k for k in schema if k not in declared]
    where = f"{cls.__name__} in lvisctl/config/sections.py"
    assert not missing, f"{cls.KEY or 'root'}: yaml keys without a field {missing}: add them to {where}"
    assert declared == list(schema), f"{where}: fields not in the yaml's order (or not in the yaml)"
    for name, kind in _field_types(cls).items():
        assert _conforms(schema[name], kind), f"{cls.KEY}.{name}: default {schema[name]!r} is not {kind}"
        if isinstance(kind, type) and issubclass(kind, Section):
            assert kind.KEY == f"{cls.KEY}.{name}".lstrip("."), kind
    # a field named like a mapping method would hide it (cfg.items())
    assert not {f.name for f in fields(cls)} & {*dir(Mapping), "get", "replace", "to_dict", "wrap"}


def test_every_mapping_of_the_yaml_is_a_section_class_or_a_free_form_mapping():
    """A YAML mapping with its own keys is a section (its own class, checked above); a field typed
    ``Mapping[str, Any]`` holds a free-form mapping (any keys, read-only)."""
    for cls in SECTIONS:
        schema = _section_of(base_schema(), cls)
        for name, kind in _field_types(cls).items():
            if isinstance(schema[name], Mapping):
                free = typing.get_origin(kind) is not None and issubclass(typing.get_origin(kind), Mapping)
                assert free or (isinstance(kind, type) and issubclass(kind, Section)), (cls.KEY, name)


def test_every_packaged_config_has_the_declared_types():
    for path in sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if "_base_" not in p.parts):
        tree = load_config(path).to_dict()
        for cls in SECTIONS:
            section = _section_of(tree, cls)
            for name, kind in _field_types(cls).items():
                assert _conforms(section[name], kind), (path.name, cls.KEY, name, section[name])


def test_load_config_builds_typed_read_only_sections():
    cfg = load_config(None, ["model.roi_heads.type=cascade"])
    assert isinstance(cfg, Config) and isinstance(cfg.model, ModelConfig)
    assert isinstance(cfg.model.roi_heads, RoIHeadsConfig) and isinstance(cfg.inference.tta, TTAConfig)
    assert cfg.model.roi_heads.cls_loss == "softmax" and cfg.inference.tta.scales == [
        400,
        600,
        800,
        1000,
        1200,
        1400,
    ]
    # the mapping face the nested dict had: items, get with a default, in, ==, **
    assert cfg["model"]["roi_heads"]["type"] == "cascade" == cfg.model.roi_heads.get("type", "x")
    assert cfg.model.get("nope", 3) == 3 and "seed" in cfg and "nope" not in cfg.model
    assert dict(**cfg.solver)["base_lr"] == 0.02 and len(cfg.log) == 4
    assert cfg == load_config(None, ["model.roi_heads.type=cascade"]) and cfg != load_config()
    assert cfg.sampler == {"type": "rfs", "rfs_threshold": 0.001, "shuffle": True}
    with pytest.raises(AttributeError, match="config has no key 'nope'"):
        _ = cfg.model.nope
    with pytest.raises(KeyError):
        _ = cfg["nope"]


def test_to_dict_is_plain_and_wrap_rebuilds_the_same_config():
    cfg = load_config("stage2/gs_hm")
    plain = cfg.to_dict()
    assert type(plain["model"]) is dict and type(plain["model"]["rpn"]["anchor_sizes"]) is list
    assert Config.wrap(plain) == cfg and Config.wrap(plain).to_dict() == plain
    plain["model"]["rpn"]["anchor_sizes"].append(1)  # a copy: the config does not see it
    assert len(cfg.model.rpn.anchor_sizes) == 5
    del plain["model"]["roi_heads"]["cls_loss"]
    with pytest.raises(LvisctlError, match=r"^config: model.roi_heads.cls_loss is missing"):
        Config.wrap(plain)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: setattr(c.model.roi_heads, "cls_loss", "eql"),
        lambda c: setattr(c, "seed", 1),
        lambda c: setattr(c.inference, "new_key", 1),
        lambda c: delattr(c.solver, "base_lr"),
        lambda c: c.inference.tta.scales.append(1600),
        lambda c: c.model.rpn.anchor_sizes.__setitem__(0, 16),
        lambda c: c.model.roi_heads.cascade.bbox_reg_weights[0].sort(),
        lambda c: operator.setitem(c.model, "fpn", {}),
        lambda c: c.train.freeze.extend(["backbone"]),
    ],
)
def test_nothing_can_change_a_loaded_config(change):
    cfg = load_config()
    before = cfg.to_dict()
    with pytest.raises((FrozenInstanceError, TypeError)):
        change(cfg)
    assert cfg.to_dict() == before


def test_replace_gives_a_checked_copy_and_leaves_the_original():
    cfg = load_config()
    paper = cfg.replace({"inference.tta.mode": "paper", "inference.tta.scales": (600, 800)})
    assert (paper.inference.tta.mode, paper.inference.tta.scales) == ("paper", [600, 800])
    assert isinstance(paper.inference.tta.scales, FrozenList)
    assert cfg.inference.tta.mode == "plain" and paper.model == cfg.model
    heads = cfg.model.roi_heads.replace({"cascade.test_mask": "last"})
    assert isinstance(heads, RoIHeadsConfig) and heads.cascade.test_mask == "last"
    other = load_config(None, ["inference.score_thresh=0.5"])
    assert cfg.replace({"inference": other.inference}).inference.score_thresh == 0.5
    for changes, message in [
        ({"inference.tta.mode": "papr"}, r"inference.tta.mode: unknown value 'papr' \(did you mean paper\?"),
        (
            {"inference.tta.scales": [0]},
            "inference.tta.scales must be a non-empty list of positive pixel sizes",
        ),
        ({"solver.base_lr": "fast"}, "solver.base_lr must be float"),
        ({"solver.max_itr": 3}, r"unknown config key solver.max_itr \(did you mean solver.max_iter\?\)"),
        (
            {"model.roi_heads.cascade.stage_loss_weights": [1.0]},
            "model.roi_heads.cascade: iou_thresholds, .* need one entry per stage, got 3, 1 and 3",
        ),
    ]:
        with pytest.raises(LvisctlError, match=f"^--x: {message}"):
            cfg.replace(changes, source="--x")


def test_configs_pickle_and_copy():
    cfg = upgrade_saved_config({**load_config().to_dict(), "gone": {"a": [1]}})
    for twin in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), copy.copy(cfg)):
        assert twin == cfg and type(twin.model.roi_heads) is RoIHeadsConfig
        assert twin.to_dict() == cfg.to_dict()
    assert pickle.loads(pickle.dumps(cfg.inference.tta.scales)) == cfg.inference.tta.scales


def test_saved_configs_keep_keys_removed_since():
    saved = load_config().to_dict()
    saved["model"]["roi_heads"]["old_switch"] = True
    saved["gone"] = {"a": 1}
    cfg = upgrade_saved_config(saved)
    assert cfg.model.roi_heads.old_switch is True and cfg.gone.a == 1 and "gone" in cfg
    assert isinstance(cfg.gone, ConfigNode) and cfg.to_dict() == saved
    assert list(cfg.to_dict()) == list(saved)  # the same order: fields, then the extra keys


def test_another_schema_gives_an_untyped_read_only_node(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("seed: 0\nsolver:\n  steps: [1]\n")
    cfg = load_config(None, ["seed=3"], base=base)
    assert isinstance(cfg, ConfigNode) and cfg.seed == 3 and cfg.solver.steps == [1]
    with pytest.raises(TypeError):
        cfg.solver.steps.append(2)
    with pytest.raises(TypeError):
        cfg.seed = 4  # type: ignore[misc]


# ------------------------------------------------------------------------------ one dotted-key helper
def test_dotted_helpers():
    tree = {"a": {"b": {"c": 1}, "d": []}, "e": 2}
    assert dotted.lookup(tree, "a.b.c") == (True, 1) and dotted.lookup(tree, "a.x") == (False, None)
    assert dotted.lookup(tree, "e.f") == (False, None) and dotted.get(tree, "a.q", 5) == 5
    assert dotted.leaves(tree) == ["a.b.c", "a.d", "e"] and dotted.leaves_under(tree, "a.b") == ["a.b.c"]
    assert dotted.leaves_under(tree, "e") == ["e"] and dotted.leaves_under(tree, "zz") == ["zz"]
    dotted.assign(tree, "a.n.m", [1])
    assert tree["a"]["n"] == {"m": [1]}
    with pytest.raises(LvisctlError, match="e is set to a value"):
        dotted.assign(tree, "e.f", 1)
    assert dotted.remove(tree, "a.n.m") == (True, [1]) and "n" not in tree["a"]  # emptied: dropped
    assert dotted.nest({"x.y": 1, "x.z": 2}) == {"x": {"y": 1, "z": 2}}
    assert dotted.within("a.b.c", ["a.b"]) and not dotted.within("a.bc", ["a.b"])
    with pytest.raises(LvisctlError, match="not a dotted config key"):
        dotted.parts("a..b")


def test_no_other_module_walks_dotted_keys_itself():
    """The package's one dotted-key helper: no ``for part in key.split(".")`` walk elsewhere."""
    root = Path(__file__).resolve().parents[2] / "lvisctl"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "dotted.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.For) and isinstance(node.iter, ast.Call):
                func = node.iter.func
                args = node.iter.args
                if isinstance(func, ast.Attribute) and func.attr == "split" and args:
                    if isinstance(args[0], ast.Constant) and args[0].value == ".":
                        offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, offenders


def test_config_modules_import_each_other_without_a_circle():
    package = Path(__file__).resolve().parents[2] / "lvisctl" / "config"
    names = {p.stem for p in package.glob("*.py")} - {"__init__"}
    edges: dict[str, set[str]] = {n: set() for n in names}
    for name in names:
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "lvisctl.config":
                    edges[name] |= {a.name for a in node.names if a.name in names}
                elif node.module.startswith("lvisctl.config."):
                    edges[name].add(node.module.rsplit(".", 1)[-1])

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    circles = sorted(n for n in names if reaches(n, n, set()))
    assert not circles, circles
    assert "loader" not in edges["catalog"]
