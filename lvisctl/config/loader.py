"""Loading, merging and validating configs (see the package docstring)."""

from __future__ import annotations

import copy
import difflib
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lvisctl.config.checks import check_values, choice_problem, lookup, typed_by_rule
from lvisctl.errors import LvisctlError


def _find_config_root() -> Path:
    """``configs/``: inside the installed package (a wheel: ``lvisctl/configs``, see setup.py), else at the
    top of the checkout next to the package (a source checkout or an editable install)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "base.yaml").is_file():
            return candidate
    return package / "configs"


CONFIG_ROOT = _find_config_root()
BASE_CONFIG = CONFIG_ROOT / "base.yaml"

# Old key -> the key that replaced it. Old configs and checkpoints keep loading, with a note.
ALIASES = {
    # test-time settings lived twice (model.test.* and inference.*); inference.* is the one kept
    "model.test.score_thresh": "inference.score_thresh",
    "model.test.nms_thresh": "inference.nms_thresh",
    "model.test.detections_per_img": "inference.detections_per_image",
}
# When a config has both: the value the old code effectively used (the model filtered by model.test.*,
# then inference.* filtered its output again, so the stricter of the two applied).
_COMBINE = {"inference.score_thresh": max, "inference.detections_per_image": min}
_noted: set[str] = set()


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with 1.2 floats: ``1e-3`` is a float (YAML 1.1, PyYAML's default, reads it as a string)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


# A config is a few KB; anything larger is not a config (or /dev/zero, which would be read forever).
MAX_CONFIG_BYTES = 1 << 20


class _ConfigLoader(_Yaml12Loader):
    """The loader of config files: no aliases (``*name``: a "billion laughs" of nested aliases expands
    without bound while it is being built), and a warning naming each duplicate key (YAML keeps the last
    value silently)."""

    source = "config"

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise LvisctlError(
                f"{self.source}: line {mark.line + 1}: YAML aliases (*name) are not accepted in configs; "
                "write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = key_node.value
            if key in seen:
                print(
                    f"warning: {self.source}: line {key_node.start_mark.line + 1}: duplicate key {key!r}; "
                    "the last value is used",
                    file=sys.stderr,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def _config_yaml_load(text: str, source: str) -> Any:
    loader = _ConfigLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_config_text(path: Path) -> str:
    """A config file's text: a regular file of at most ``MAX_CONFIG_BYTES`` (a device or a fifo would
    never end), UTF-8."""
    if not path.is_file():
        raise LvisctlError(f"{path}: not a regular file; a config is a YAML file")
    with open(path, "rb") as fh:
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise LvisctlError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file")
    return raw.decode("utf-8")


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
    if path.is_dir():
        raise LvisctlError(f"{path}: is a directory, not a config file (lvisctl configs list shows them)")
    if not path.exists():
        raise LvisctlError(f"{path}: config file not found")
    try:
        data = _config_yaml_load(_read_config_text(path), str(path)) or {}
    except yaml.YAMLError as err:
        raise LvisctlError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except (UnicodeDecodeError, OSError) as err:
        raise LvisctlError(f"{path}: cannot read the config ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise LvisctlError(f"{path}: a config must be a mapping of keys to values")
    return apply_aliases(data, str(path))


def apply_aliases(data: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Move old keys (``ALIASES``) to their new place (given both, as the old code combined them); a note
    once per key."""
    out = copy.deepcopy(dict(data))
    for old, new in ALIASES.items():
        found, value = _pop_dotted(out, old)
        if not found:
            continue
        if old not in _noted:
            _noted.add(old)
            print(f"note: {source}: {old} is deprecated; it is read as {new}", file=sys.stderr)
        has_new, new_value = lookup(out, new)
        if has_new and new in _COMBINE and value is not None and new_value is not None:
            value = _COMBINE[new](value, new_value)
        if not has_new or new in _COMBINE:
            _set_dotted(out, new, value)
    return out


def _pop_dotted(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    chain = [data]
    for part in parents:
        if not isinstance(chain[-1].get(part), dict):
            return False, None
        chain.append(chain[-1][part])
    if leaf not in chain[-1]:
        return False, None
    value = chain[-1].pop(leaf)
    for parent, part in zip(reversed(chain[:-1]), reversed(parents), strict=True):  # drop emptied sections
        if not parent[part]:
            del parent[part]
    return True, value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise LvisctlError(f"{path}: _base_ chain loops back to itself")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, _load_with_bases(_base_path(path, base), (*seen, path)))
    return deep_merge(merged, data)


PACKAGE_SCOPE = "lvisctl::"


def _base_path(path: Path, base: Any) -> Path:
    """A ``_base_`` entry of ``path``: ``lvisctl::NAME`` is a packaged config (as mmengine's ``mmdet::``
    scope), so a user's yaml can inherit one from an installed wheel; any other entry is a file next to
    ``path``, else (none there) a packaged config of that name, as ``--config`` takes it."""
    text = str(base)
    if text.startswith(PACKAGE_SCOPE):
        name = text.removeprefix(PACKAGE_SCOPE).removesuffix(".yaml")
        packaged = CONFIG_ROOT / f"{name}.yaml"
        if not packaged.is_file():
            raise LvisctlError(f"{path}: _base_ {text}: no packaged config {name} (lvisctl configs list)")
        return packaged
    local = path.parent / text
    if local.exists() or Path(text).is_absolute():
        return local
    try:
        return resolve_config_path(text)
    except LvisctlError:
        raise LvisctlError(
            f"{path}: _base_ {text}: no such file next to it, and no packaged config of that name "
            "(lvisctl configs list)"
        ) from None


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
            value = _yaml_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise LvisctlError(f"override {item!r}: {part} is set to a value by another override")
            node = node[part]
        node[parts[-1]] = value
    return apply_aliases(out, "command-line override")


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
            if ref:  # an empty default ({}) is a free mapping, checked by its owner (checks.plugin_args)
                _validate(ref, value, source, dotted + ".", root)
        elif (
            ref is not None
            and value is not None
            and not _same_type(ref, value)
            and not typed_by_rule(dotted, value)
        ):
            element = _list_problem(ref, value) if isinstance(value, (list, tuple)) else None
            detail = f" ({element})" if element else ""
            raise LvisctlError(
                f"{source}: {dotted} must be {type(ref).__name__} (like the default {ref!r}), got "
                f"{_short(value)}{detail}"
            )
        elif problem := choice_problem(dotted, value):
            raise LvisctlError(f"{source}: {problem}")


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _same_type(ref: Any, value: Any) -> bool:
    if isinstance(ref, bool) or isinstance(value, bool):
        return isinstance(ref, bool) and isinstance(value, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float))
    if isinstance(ref, (list, tuple)):
        return isinstance(value, (list, tuple)) and _list_problem(ref, value) is None
    return isinstance(value, type(ref))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names = {str: "string", list: "list", tuple: "list", dict: "mapping"}
    return names.get(type(value), type(value).__name__)


def _list_problem(ref: list | tuple, value: list | tuple) -> str | None:
    """What is wrong with the elements of a list value, judged by the default's elements: the same kinds
    (numbers, strings, lists, ...; null where the default has one), nested lists alike and of the default's
    length when all of its inner lists have one length (``valid_ranges`` are [lo, hi] pairs)."""
    if not ref:
        return None
    kinds = {_kind(r) for r in ref if r is not None}
    allow_null = any(r is None for r in ref)
    inner = [r for r in ref if isinstance(r, (list, tuple))]
    lengths = {len(r) for r in inner}
    for item in value:
        if item is None:
            if allow_null:
                continue
            return f"null where {' or '.join(sorted(kinds))} is expected"
        if _kind(item) not in kinds:
            return f"{item!r} is a {_kind(item)}; expected {' or '.join(sorted(kinds))} elements"
        if isinstance(item, (list, tuple)):
            if len(lengths) == 1 and len(item) not in lengths:
                return f"{item!r} has {len(item)} elements; expected {lengths.pop()}"
            problem = _list_problem([x for r in inner for x in r], item)
            if problem:
                return problem
    return None


def resolve_config_path(value: str | Path) -> Path:
    """A config file from a path, or a packaged config's name (``stage1/r50_da_eql_rfs``, ``.yaml`` optional;
    ``configs/stage1/...`` as the README writes it works from any directory). A file that exists wins."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise LvisctlError(f"{value}: is a directory, not a config file (lvisctl configs list shows them)")
    if path.is_file() or path.is_absolute():
        return path
    name = path.as_posix().removesuffix(".yaml")
    name = name.removeprefix("./").removeprefix("configs/")
    packaged = CONFIG_ROOT / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    from lvisctl.config.catalog import config_names

    close = difflib.get_close_matches(name, config_names(), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise LvisctlError(
        f"{value}: config file not found, and no packaged config of that name{hint} "
        "(lvisctl configs list shows them)"
    )


# Keys whose default changed behaviour when they were added: a saved config without them was trained
# (and is evaluated) with the value here, not with today's default.
BEHAVIOUR_BEFORE_KEY: dict[str, Any] = {
    "model.roi_heads.cascade.sampling_ratio": 2,
    "model.roi_heads.cascade.aligned": False,
    "model.roi_heads.cascade.smooth_l1_beta": 1 / 9,
    "model.roi_heads.cascade.test_mask": "last",
}


def _keep_old_behaviour(saved: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(saved))
    if not isinstance(out.get("model"), Mapping):
        return out
    for dotted, value in BEHAVIOUR_BEFORE_KEY.items():
        node: Any = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return out


def upgrade_saved_config(saved: Mapping[str, Any]) -> Any:
    """A config saved in a checkpoint, as today's code reads it: old keys moved (``ALIASES``), keys whose
    addition changed behaviour set to the old behaviour (``BEHAVIOUR_BEFORE_KEY``) and the other keys
    added since it was written filled with their defaults. Not validated (it was when it was saved)."""
    schema = _load_with_bases(BASE_CONFIG)
    saved = _keep_old_behaviour(apply_aliases(saved, "checkpoint config"))
    return Config.wrap(deep_merge(schema, saved))


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), *, base: Path = BASE_CONFIG
) -> Config:
    """Load ``path`` (a file or a packaged config name; None: only the base) with its ``_base_`` chain and
    ``overrides``; validate keys and types against the base, then choices and value ranges."""
    schema = _load_with_bases(base)
    merged = schema
    cfg_source = str(base)
    if path is not None:
        cfg_path = resolve_config_path(path)
        data = _load_with_bases(cfg_path)
        _validate(schema, data, str(cfg_path))
        merged = deep_merge(schema, data)
        cfg_source = str(cfg_path)
    override_data = parse_overrides(overrides)
    _validate(schema, override_data, "command-line override")
    merged = deep_merge(merged, override_data)

    def source_of(key: str) -> str:
        return "command-line override" if lookup(override_data, key)[0] else cfg_source

    check_values(merged, source_of)
    return Config.wrap(merged)
