"""Read-only config values: typed sections, free-form mappings and lists that refuse to change.

A config is built once by ``load_config`` and never changes afterwards: a run records it in its manifest
and checkpoints, and a value changed on the way (by a hook, a builder, a command) would make the record
lie. Each section is a frozen dataclass (:class:`Section`, the fields in ``lvisctl.config.sections``) that
also reads as a mapping (``cfg["model"]``, ``cfg.model.get("x", default)``, ``in``, ``items()``), as the
nested dict with attribute access it replaces did. A changed config is a new object:
``cfg.replace({"inference.tta.mode": "paper"})``, checked as a command-line override would be.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any, ClassVar, TypeVar

from lvisctl.config import dotted
from lvisctl.errors import LvisctlError

READ_ONLY = "configs are read-only after load_config; build a changed copy with cfg.replace({key: value})"

S = TypeVar("S", bound="Section")


class FrozenList(list):
    """A list value of a config: equal to, iterated and serialised as the list it holds; changing it
    raises ``TypeError``."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(READ_ONLY)

    append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # pickle / deepcopy rebuild a list subclass with append(), which refuses
        return (FrozenList, (list(self),))


def freeze(value: Any) -> Any:
    """A plain config value (from YAML or ``to_dict``) as a read-only one: mappings -> :class:`ConfigNode`,
    lists and tuples -> :class:`FrozenList`; sections and scalars as they are."""
    if isinstance(value, (Section, ConfigNode)):
        return value
    if isinstance(value, Mapping):
        return ConfigNode(value)
    if isinstance(value, (list, tuple)):
        return FrozenList(freeze(v) for v in value)
    return value


def to_plain(value: Any) -> Any:
    """A config value as plain, json/yaml-serialisable data (fresh dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


class _ReadOnlyMapping(Mapping[str, Any]):
    """Attribute access, ``to_dict`` and refusal of assignment, shared by sections and free-form nodes."""

    def _items(self) -> Mapping[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __getattr__(self, name: str) -> Any:
        # only called for names that are not fields; private names never come from a config (and pickle
        # and copy probe ``__setstate__`` & co. on half-built objects)
        if not name.startswith("_"):
            extra = self.__dict__.get("_extra", {})
            if name in extra:
                return extra[name]
        raise AttributeError(f"config has no key {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(READ_ONLY)

    def __delattr__(self, name: str) -> None:
        raise TypeError(READ_ONLY)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (what manifests, checkpoints and ``configs show`` write)."""
        return to_plain(self)


class ConfigNode(_ReadOnlyMapping):
    """A mapping without fixed keys inside a config (a free-form ``{}`` value), or a whole config loaded
    against another schema than the package's (``load_config(base=...)``)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_extra", {k: freeze(v) for k, v in data.items()})

    def _items(self) -> Mapping[str, Any]:
        return self.__dict__["_extra"]

    def __repr__(self) -> str:
        return f"ConfigNode({self._items()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigNode, (self.to_dict(),))

    @classmethod
    def wrap(cls, data: Mapping[str, Any]) -> ConfigNode:
        return cls(data)


class Section(_ReadOnlyMapping):
    """Base of the typed config sections (frozen dataclasses in ``lvisctl.config.sections``).

    ``KEY`` is the section's dotted key in the whole config (``model.roi_heads``; ``""`` for the root).
    Keys the dataclass does not declare (a key of a config saved by an older lvisctl that has since been
    removed) are kept, readable by attribute and written back by ``to_dict``, so a saved config round-trips.
    """

    KEY: ClassVar[str] = ""

    def _items(self) -> Mapping[str, Any]:
        own = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return {**own, **self.__dict__.get("_extra", {})}

    def __getitem__(self, key: str) -> Any:
        if key in _field_types(type(self)):
            return getattr(self, key)
        return self.__dict__.get("_extra", {})[key]

    def __contains__(self, key: object) -> bool:
        return key in _field_types(type(self)) or key in self.__dict__.get("_extra", {})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # a mapping, like the dict it replaces

    @classmethod
    def wrap(cls: type[S], data: Mapping[str, Any]) -> S:
        """The section built from a complete plain mapping (a resolved config, ``to_dict`` output, a
        config saved in a checkpoint and upgraded). A declared key that is missing is an error."""
        types = _field_types(cls)
        values = {}
        for name, kind in types.items():
            if name not in data:
                where = f"{cls.KEY}.{name}" if cls.KEY else name
                raise LvisctlError(f"config: {where} is missing (every key of configs/base.yaml must be set)")
            value = data[name]
            values[name] = (
                kind.wrap(value) if _is_section(kind) and isinstance(value, Mapping) else freeze(value)
            )
        obj = cls(**values)
        extra = {k: freeze(v) for k, v in data.items() if k not in types}
        if extra:
            object.__setattr__(obj, "_extra", extra)
        return obj

    def replace(self: S, changes: Mapping[str, Any], *, source: str = "config change") -> S:
        """A new section with each dotted key (relative to this section, e.g. ``"tta.scales"`` on
        ``cfg.inference``) set to its value. Plain values are checked as command-line overrides are
        (known key, type, choice, range, and the cross-key rules that read them; errors name ``source``);
        a value that is itself a config section was checked where it was built and is taken as it is."""
        from lvisctl.config.schema import check_changes

        prefix = f"{self.KEY}." if self.KEY else ""
        out = self.to_dict()
        for key, value in changes.items():
            dotted.assign(out, key, to_plain(value))
        plain = {
            f"{prefix}{key}": to_plain(value)
            for key, value in changes.items()
            if not isinstance(value, _ReadOnlyMapping)
        }
        if plain:
            check_changes(plain, dotted.nest({self.KEY: out}) if self.KEY else out, source)
        return type(self).wrap(out)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.to_dict()))


def _rebuild(cls: type[Section], data: dict[str, Any]) -> Section:
    return cls.wrap(data)


def _is_section(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Section)


@functools.cache
def _field_types(cls: type[Section]) -> dict[str, Any]:
    """Field name -> resolved annotation, in declaration order (the YAML's order)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}  # type: ignore[arg-type]
