"""The packaged configs: names and one-line purposes (``lvisctl configs list``).

A config's name is its path under ``configs/`` without ``.yaml`` (``stage1/r50_da_eql_rfs``); ``--config``
takes it from any directory. Its purpose is the first sentence of the file's header comment, which says
which row of the paper's Table 1 / Table 2 it reproduces. ``configs/base.yaml`` and ``configs/_base_/`` are
the schema, and files whose name starts with ``_`` are pieces other configs include; neither is listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lvisctl.config.loader import CONFIG_ROOT


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    path: Path
    purpose: str


def _listed(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    return rel.parts[0] != "_base_" and rel.as_posix() != "base.yaml" and not path.name.startswith("_")


def purpose_of(path: Path) -> str:
    """The config's description: its leading comment lines up to the first line that ends a sentence.

    Headers wrap at ~110 columns, so a first line may stop mid-sentence ("... Paper:" / "33.2 AP."): the
    description runs on until a line ends with a full stop (or the comment block ends), never cut.
    '' when the file does not start with a comment.
    """
    parts: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped and not parts:
            continue
        if not stripped.startswith("#"):
            break
        parts.append(stripped.lstrip("#").strip())
        if parts[-1].endswith("."):
            break
    return " ".join(p for p in parts if p)


def list_configs(root: Path = CONFIG_ROOT) -> list[ConfigEntry]:
    """Every packaged experiment config, sorted by name."""
    paths = sorted(p for p in root.rglob("*.yaml") if _listed(p, root))
    return [ConfigEntry(p.relative_to(root).with_suffix("").as_posix(), p, purpose_of(p)) for p in paths]


def config_names(root: Path = CONFIG_ROOT) -> list[str]:
    return [entry.name for entry in list_configs(root)]
