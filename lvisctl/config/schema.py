"""The schema (``configs/base.yaml`` and its ``_base_`` files) and the checks of values against it.

A config's keys and types are judged by the schema's defaults: an unknown key, a value of another type
than its default, a choice outside ``lvisctl.config.choices``, a number outside ``checks.RULES`` or keys
that contradict each other (``cross_checks``) is a one-line ``LvisctlError`` naming the key.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lvisctl.config import dotted
from lvisctl.config.aliases import apply_aliases
from lvisctl.config.catalog import BASE_CONFIG, CONFIG_ROOT, resolve_config_path
from lvisctl.config.checks import choice_problem, raise_first, rule_problems, typed_by_rule
from lvisctl.config.cross_checks import cross_problems
from lvisctl.config.yaml_io import read_config_file
from lvisctl.errors import LvisctlError

PACKAGE_SCOPE = "lvisctl::"


def read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its ``_base_`` chain merged under it, old keys moved (plain dicts)."""
    path = path.resolve()
    if path in seen:
        raise LvisctlError(f"{path}: _base_ chain loops back to itself")
    data = apply_aliases(read_config_file(path), str(path))
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, read_tree(_base_path(path, base), (*seen, path)))
    return deep_merge(merged, data)


_SCHEMA_CACHE: dict[Path, dict[str, Any]] = {}


def base_schema(base: Path = BASE_CONFIG) -> dict[str, Any]:
    """The schema tree (a fresh copy). The packaged one is read once per process: it ships with the code
    and does not change while it runs."""
    if base != BASE_CONFIG:
        return read_tree(base)
    if base not in _SCHEMA_CACHE:
        _SCHEMA_CACHE[base] = read_tree(base)
    return copy.deepcopy(_SCHEMA_CACHE[base])


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


# ------------------------------------------------------------------------------ keys and types
def validate(
    schema: Mapping[str, Any],
    data: Mapping[str, Any],
    source: str,
    prefix: str = "",
    root: Mapping[str, Any] | None = None,
) -> None:
    """Every key of ``data`` is one of ``schema``'s, of its default's type, and an allowed choice."""
    root = schema if root is None else root
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            # a leaf given without its section (max_iter=10 for solver.max_iter)
            elsewhere = [p for p in dotted.leaves(root) if p.rsplit(".", 1)[-1] == key]
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            hint = hint or (f" (did you mean {' or '.join(elsewhere[:2])}?)" if elsewhere else "")
            raise LvisctlError(f"{source}: unknown config key {name}{hint}")
        ref = schema[key]
        if isinstance(ref, Mapping):
            if not isinstance(value, Mapping):
                raise LvisctlError(f"{source}: {name} must be a mapping")
            if ref:  # an empty default ({}) is a free mapping, checked by its owner (checks.PLUGIN_ARGS)
                validate(ref, value, source, name + ".", root)
        elif (
            ref is not None
            and value is not None
            and not _same_type(ref, value)
            and not typed_by_rule(name, value)
        ):
            element = _list_problem(ref, value) if isinstance(value, (list, tuple)) else None
            detail = f" ({element})" if element else ""
            raise LvisctlError(
                f"{source}: {name} must be {type(ref).__name__} (like the default {ref!r}), got "
                f"{_short(value)}{detail}"
            )
        elif problem := choice_problem(name, value):
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


# ------------------------------------------------------------------------------ a changed config
def check_changes(changes: Mapping[str, Any], tree: Mapping[str, Any], source: str = "config change") -> None:
    """The checks a command-line override gets, for ``changes`` (dotted key -> plain value) made to a
    loaded config whose new values are ``tree`` (the whole config, or a section nested under its key):
    known key and type, choice, range, and the cross-key rules that read a changed key."""
    validate(base_schema(), dotted.nest(changes), source)
    touched = list(changes)
    problems = rule_problems(tree, touched) or cross_problems(tree, touched)
    raise_first({source: [problem for _, problem in problems]} if problems else {})
