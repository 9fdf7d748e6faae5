"""Loading a config: the ``_base_`` chain, overrides, checks, and the typed read-only result.

``load_config`` is the one place a config is built from files: it merges ``configs/base.yaml`` (the
schema), the experiment file and ``key=value`` overrides, checks keys, types, choices, ranges and the
cross-key rules (``checks``, ``cross_checks``) before anything else loads, and returns a frozen
:class:`~lvisctl.config.sections.Config`. A config saved in a checkpoint is read through
``upgrade_saved_config``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml

from lvisctl.config import dotted
from lvisctl.config.aliases import ALIASES, BEHAVIOUR_BEFORE_KEY, apply_aliases, keep_old_behaviour
from lvisctl.config.catalog import BASE_CONFIG, CONFIG_ROOT, resolve_config_path
from lvisctl.config.checks import check_values
from lvisctl.config.frozen import ConfigNode, to_plain
from lvisctl.config.schema import PACKAGE_SCOPE, base_schema, deep_merge, read_tree, validate
from lvisctl.config.sections import Config
from lvisctl.config.yaml_io import MAX_CONFIG_BYTES, yaml_scalar
from lvisctl.errors import LvisctlError

__all__ = [
    "ALIASES",
    "BASE_CONFIG",
    "BEHAVIOUR_BEFORE_KEY",
    "CONFIG_ROOT",
    "MAX_CONFIG_BYTES",
    "PACKAGE_SCOPE",
    "Config",
    "apply_aliases",
    "deep_merge",
    "load_config",
    "parse_overrides",
    "resolve_config_path",
    "upgrade_saved_config",
]


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["model.backbone=r50", "solver.lr=0.01"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise LvisctlError(f"override {item!r}: expected key=value, e.g. solver.base_lr=0.01")
        key, raw = item.split("=", 1)
        try:
            value = yaml_scalar(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        try:
            dotted.assign(out, key, value)
        except LvisctlError as err:
            raise LvisctlError(f"override {item!r}: {str(err).split(': ', 1)[-1]}") from None
    return apply_aliases(out, "command-line override")


def upgrade_saved_config(saved: Mapping[str, Any]) -> Config:
    """A config saved in a checkpoint, as today's code reads it: old keys moved (``ALIASES``), keys whose
    addition changed behaviour set to the old behaviour (``BEHAVIOUR_BEFORE_KEY``) and the other keys
    added since it was written filled with their defaults. Not checked again (it was when it was saved);
    keys since removed are kept (``to_dict`` writes them back)."""
    saved = keep_old_behaviour(apply_aliases(to_plain(saved), "checkpoint config"))
    return Config.wrap(deep_merge(base_schema(), saved))


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), *, base: Path = BASE_CONFIG
) -> Config:
    """Load ``path`` (a file or a packaged config name; None: only the base) with its ``_base_`` chain and
    ``overrides``; check keys and types against the base, then choices, value ranges and cross-key rules.

    ``base``: another schema (tests); the result is then an untyped read-only
    :class:`~lvisctl.config.frozen.ConfigNode` with the same access (attributes, ``get``, ``to_dict``).
    """
    schema = base_schema(base)
    merged = schema
    cfg_source = str(base)
    if path is not None:
        cfg_path = resolve_config_path(path)
        data = read_tree(cfg_path)
        validate(schema, data, str(cfg_path))
        merged = deep_merge(schema, data)
        cfg_source = str(cfg_path)
    override_data = parse_overrides(overrides)
    validate(schema, override_data, "command-line override")
    merged = deep_merge(merged, override_data)

    def source_of(key: str) -> str:
        return "command-line override" if dotted.lookup(override_data, key)[0] else cfg_source

    check_values(merged, source_of)
    if Path(base) == BASE_CONFIG:
        return Config.wrap(merged)
    return cast(Config, ConfigNode(merged))
