"""Dotted keys (``model.roi_heads.cls_loss``) over nested mappings: the one helper of the package.

Configs, overrides, aliases, saved checkpoint configs and the stage-2 inheritance rules all name a value
by its dotted key; every walk of a nested mapping by such a key goes through these functions, so "found",
"missing" and "a value where a section was expected" mean the same thing everywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from lvisctl.errors import LvisctlError


def parts(key: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "b", "c"]``; an empty part (``a..b``, ``.a``) is a one-line error."""
    split = key.strip().split(".")
    if not all(split):
        raise LvisctlError(f"{key!r}: not a dotted config key (e.g. solver.base_lr)")
    return split


def lookup(tree: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """``(found, value)`` of a dotted key in a nested mapping."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def get(tree: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The value of a dotted key, ``default`` when it is missing."""
    found, value = lookup(tree, key)
    return value if found else default


def assign(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a plain nested dict, creating the sections on the way (a copy of ``value``).

    A value found where a section is needed is an error: ``a=1`` then ``a.b=2`` cannot both hold."""
    *parents, leaf = parts(key)
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LvisctlError(f"{key}: {part} is set to a value, not a section")
        node = child
    node[leaf] = copy.deepcopy(value)


def remove(tree: dict[str, Any], key: str) -> tuple[bool, Any]:
    """Pop a dotted key from a plain nested dict: ``(found, value)``; sections it empties are dropped."""
    *parents, leaf = key.split(".")
    chain = [tree]
    for part in parents:
        if not isinstance(chain[-1].get(part), dict):
            return False, None
        chain.append(chain[-1][part])
    if leaf not in chain[-1]:
        return False, None
    value = chain[-1].pop(leaf)
    for parent, part in zip(reversed(chain[:-1]), reversed(parents), strict=True):
        if not parent[part]:
            del parent[part]
    return True, value


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}`` (later keys win, as overrides do)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        assign(out, key, value)
    return out


def leaves(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key of a non-mapping value under ``tree`` (``prefix`` names ``tree`` itself); an empty
    section has none."""
    out: list[str] = []
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        out += leaves(value, dotted) if isinstance(value, Mapping) else [dotted]
    return out


def leaves_under(tree: Mapping[str, Any], key: str) -> list[str]:
    """The leaves of the section ``key`` of ``tree`` (``[key]`` when it is a value or missing)."""
    found, value = lookup(tree, key)
    return leaves(value, key) if found and isinstance(value, Mapping) else [key]


def within(key: str, sections: Iterable[str]) -> bool:
    """Whether ``key`` is one of ``sections`` or lies inside one of them."""
    return any(key == s or key.startswith(s + ".") for s in sections)
