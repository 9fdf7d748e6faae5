"""Loading, merging and validating configs (see the package docstring)."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lvisctl.errors import LvisctlError

# configs/ sits next to the package in the repository (editable installs and CI use the repo).
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
BASE_CONFIG = CONFIG_ROOT / "base.yaml"


class Config(dict):
    """A nested dict with attribute access (``cfg.model.backbone``). Plain json-serialisable data."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    @classmethod
    def wrap(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return cls({k: cls.wrap(v) for k, v in value.items()})
        if isinstance(value, list):
            return [cls.wrap(v) for v in value]
        return value

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(_unwrap(self))


def _unwrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise LvisctlError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LvisctlError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LvisctlError(f"{path}: a config must be a mapping of keys to values")
    return data


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise LvisctlError(f"{path}: _base_ chain loops back to itself")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, _load_with_bases((path.parent / base), (*seen, path)))
    return deep_merge(merged, data)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge; mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["model.backbone=r50", "solver.lr=0.01"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise LvisctlError(f"override {item!r}: expected key=value, e.g. solver.base_lr=0.01")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _leaf_paths(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in schema.items():
        out += _leaf_paths(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [f"{prefix}{key}"]
    return out


def _validate(
    schema: Mapping[str, Any],
    data: Mapping[str, Any],
    source: str,
    prefix: str = "",
    root: Mapping[str, Any] | None = None,
) -> None:
    root = schema if root is None else root
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            # a leaf given without its section (max_iter=10 for solver.max_iter)
            elsewhere = [p for p in _leaf_paths(root) if p.rsplit(".", 1)[-1] == key]
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            hint = hint or (f" (did you mean {' or '.join(elsewhere[:2])}?)" if elsewhere else "")
            raise LvisctlError(f"{source}: unknown config key {dotted}{hint}")
        ref = schema[key]
        if isinstance(ref, Mapping):
            if not isinstance(value, Mapping):
                raise LvisctlError(f"{source}: {dotted} must be a mapping")
            _validate(ref, value, source, dotted + ".", root)
        elif ref is not None and value is not None and not _same_type(ref, value):
            raise LvisctlError(
                f"{source}: {dotted} must be {type(ref).__name__} (like the default {ref!r}), got {value!r}"
            )


def _same_type(ref: Any, value: Any) -> bool:
    if isinstance(ref, bool) or isinstance(value, bool):
        return isinstance(ref, bool) and isinstance(value, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float))
    if isinstance(ref, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(ref))


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), *, base: Path = BASE_CONFIG
) -> Config:
    """Load ``path`` (or only the base) with its ``_base_`` chain and ``overrides``; validate against base."""
    schema = _load_with_bases(base)
    merged = schema
    if path is not None:
        cfg_path = Path(path)
        data = _load_with_bases(cfg_path)
        _validate(schema, data, str(cfg_path))
        merged = deep_merge(schema, data)
    override_data = parse_overrides(overrides)
    _validate(schema, override_data, "command-line override")
    merged = deep_merge(merged, override_data)
    return Config.wrap(merged)
