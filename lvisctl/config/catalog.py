"""The packaged configs: names and one-line purposes (``lvisctl configs list``).

A config's name is its path under ``configs/`` without ``.yaml`` (``stage1/r50_da_eql_rfs``); ``--config``
takes it from any directory. Its purpose is the first sentence of the file's header comment, which says
which row of the paper's Table 1 / Table 2 it reproduces. ``configs/base.yaml`` and ``configs/_base_/`` are
the schema, and files whose name starts with ``_`` are pieces other configs include; neither is listed.
This module sits below the loader (it imports nothing of the config package), so the loader can name a
close packaged config in its errors.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

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
    close = difflib.get_close_matches(name, config_names(), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise LvisctlError(
        f"{value}: config file not found, and no packaged config of that name{hint} "
        "(lvisctl configs list shows them)"
    )
