"""Reading config files: YAML 1.2 floats, no aliases, duplicate keys named, bounded regular files."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from lvisctl.errors import LvisctlError


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


def yaml_scalar(text: str) -> Any:
    """A command-line override's value parsed as YAML 1.2 (``1e-3`` a float, ``[1, 2]`` a list)."""
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


def read_config_file(path: Path) -> dict[str, Any]:
    """One config file as a plain mapping (its ``_base_`` entry included, not followed)."""
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
    return data
