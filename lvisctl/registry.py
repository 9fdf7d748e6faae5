"""One registry per plug-in point: the only list of the names a config value may pick.

A plug-in declares its name once, on itself::

    from lvisctl.registry import CLS_LOSSES

    @CLS_LOSSES.register("seesaw", help="Seesaw loss (Wang et al. 2021)")
    class SeesawLoss(ClassificationLoss): ...

Config checks (``lvisctl.config.choices``), "did you mean" messages, ``lvisctl configs show`` and the tests
read the names from the registry, so adding a plug-in is one new file (in the registry's package, which is
imported on the first lookup) plus the config value that picks it: no table elsewhere to edit.

This module sits at the bottom layer (beside ``errors``): it imports nothing of lvisctl's but ``errors``.
The packages that hold the plug-ins are imported by name on the first lookup, the way detectron2's and
mmdet's registries are filled by importing their model packages, so no lower layer imports a higher one.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lvisctl.errors import LvisctlError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    help: str


class Registry(Generic[T]):
    """Name -> plug-in for one config key (``key``; None for plug-in points no config value picks).

    ``packages``: dotted package names whose modules are imported (all of them, recursively) before the first
    lookup, so that their ``@register`` decorators have run.
    """

    def __init__(self, what: str, key: str | None = None, packages: tuple[str, ...] = ()) -> None:
        self.what = what
        self.key = key
        self.packages = packages
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = not packages
        if key is not None:
            if key in REGISTRIES:
                raise ValueError(f"two registries for config key {key!r}")
            REGISTRIES[key] = self

    # -------------------------------------------------------------------------------- declaring
    def register(self, name: str, *, help: str) -> Callable[[T], T]:  # noqa: A002 - the CLI's word
        """Decorator: ``@REG.register("name", help="one line")`` on a class or function."""

        def add(obj: T) -> T:
            self.add(name, obj, help=help)
            return obj

        return add

    def add(self, name: str, obj: T, *, help: str) -> None:  # noqa: A002
        known = self._entries.get(name)
        if known is not None and known.obj is not obj:
            raise ValueError(f"{self.what}: {name!r} registered twice ({known.obj!r} and {obj!r})")
        self._entries[name] = Entry(name, obj, help)

    # -------------------------------------------------------------------------------- looking up
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: the imported modules may look names up themselves
        for package in self.packages:
            _import_all(package)

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def descriptions(self) -> dict[str, str]:
        """name -> one-line description, in registration order."""
        self._load()
        return {e.name: e.help for e in self._entries.values()}

    def get(self, name: object) -> T:
        """The plug-in called ``name``; a one-line ``LvisctlError`` naming the key and the closest names."""
        self._load()
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise LvisctlError(self.unknown_message(name))
        return entry.obj

    def unknown_message(self, name: object) -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{self.key or self.what}: unknown value {name!r} (choose from {', '.join(names)}){hint}"

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _import_all(package: str) -> None:
    """Import ``package`` and every module below it (the modules' decorators fill the registries)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), prefix=f"{package}."):
        importlib.import_module(info.name)


# config key -> its registry (filled by the constructors below)
REGISTRIES: dict[str, Registry[Any]] = {}

# ------------------------------------------------------------------------------------ the plug-in points
CLS_LOSSES: Registry[Any] = Registry("classification loss", "model.roi_heads.cls_loss", ("lvisctl.losses",))
MASK_LOSSES: Registry[Any] = Registry("mask loss", "model.mask_head.loss", ("lvisctl.losses",))
MASK_HEADS: Registry[Any] = Registry("mask head", "model.mask_head.type", ("lvisctl.modeling",))
ROI_HEADS: Registry[Any] = Registry("RoI-head type", "model.roi_heads.type", ("lvisctl.modeling",))
SAMPLERS: Registry[Any] = Registry("training sampler", "sampler.type", ("lvisctl.data",))
BACKBONES: Registry[Any] = Registry("backbone", "model.backbone.name", ("lvisctl.modeling",))
TTA_AUGMENTATIONS: Registry[Any] = Registry("test-time augmentation", None, ("lvisctl.inference",))
TTA_MERGE_STEPS: Registry[Any] = Registry("TTA merge step", None, ("lvisctl.inference",))
HOOKS: Registry[Any] = Registry("training hook", None, ("lvisctl.engine", "lvisctl.training"))


def registry_for(key: str) -> Registry[Any] | None:
    """The registry that holds the allowed values of config key ``key`` (None: a fixed choice table)."""
    return REGISTRIES.get(key)
