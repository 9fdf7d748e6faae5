"""A run remembers its data: the first command given ``data.train`` / ``val`` / ``test_info`` /
``image_root`` records them (absolute paths) in the run's manifest, and every later command of the run
takes what it is not given from there, and says so.

So the README's stage-2 command, ``tta-infer``, ``visualize``, ``analyze masks`` and ``submit`` need no path
once stage 1 was given its data (or ``lvisctl data register`` recorded it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lvisctl.config import Config
from lvisctl.data.builtin import builtin_image_root, builtin_json, is_builtin
from lvisctl.data.lvis import configured_path, resolve_image_root
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir

KEYS = ("train", "val", "test_info", "image_root")
# `tta-infer --images val|test`: the run's remembered split
SPLIT_WORDS = {"val": "val", "test": "test_info"}

Say = Callable[[str], None]


def given_data(data_cfg: Mapping[str, Any]) -> dict[str, str]:
    """The data keys a config sets, as absolute paths (builtin names and ``data.root`` resolved); only
    files and folders that exist (a missing one fails the command with its own message)."""
    out = {}
    for key in ("train", "val", "test_info"):
        path = configured_path(data_cfg, key)
        if path is not None and path.is_file():
            out[key] = str(path.resolve())
    root = resolve_image_root(data_cfg)
    if root is not None and root.path.is_dir():
        out["image_root"] = str(root.path.resolve())
    return out


def remember_data(run_dir: str | os.PathLike[str], data: Mapping[str, str], say: Say) -> None:
    """Record ``data`` (key -> path) for the keys the run does not remember yet; says what it added."""
    if not data:
        return
    run = RunDir(run_dir)
    added = run.remember_datasets(dict(data))
    if added:
        listed = ", ".join(f"data.{k}={v}" for k, v in added.items())
        say(f"{run.root}: remembers {listed} for the run's later commands")


def fill_data(run_dir: str | os.PathLike[str], cfg: Config, say: Say) -> Config:
    """``cfg`` with its empty ``data.*`` keys taken from what the run remembers; says which it took."""
    known = _known(run_dir)
    data = cfg.data
    used = {}
    for key in KEYS:
        if key in known and not str(data.get(key, "") or ""):
            used[key] = known[key]
    if not used:
        return cfg
    say("using the run's data: " + ", ".join(f"data.{k}={v}" for k, v in used.items()))
    return cfg.replace({f"data.{k}": v for k, v in used.items()}, source=f"{run_dir}/manifest.json")


def remembered_path(run_dir: str | os.PathLike[str], key: str, option: str, say: Say) -> Path:
    """The remembered ``data.<key>`` for a command option left out; one line when the run has none."""
    known = _known(run_dir)
    if key not in known:
        raise LvisctlError(
            f"{Path(run_dir) / 'manifest.json'}: the run remembers no data.{key}: pass {option} FILE, or "
            f"record it once with lvisctl data register --run-dir {run_dir} --{key.replace('_info', '')} FILE"
        )
    say(f"using the run's data.{key}={known[key]}")
    return Path(known[key])


def inference_inputs(
    run_dir: str | os.PathLike[str], images: str | None, image_root: Path | None, say: Say
) -> tuple[Path, Path | None]:
    """``tta-infer``'s ``--images`` / ``--image-root``: left out = the run's ``data.val``; ``val`` / ``test``
    = the run's split; a builtin name = its json and image root; the image root defaults to the run's."""
    if images is None or images in SPLIT_WORDS:
        key = SPLIT_WORDS.get(images or "val", "val")
        path = remembered_path(run_dir, key, "--images", say)
    elif is_builtin(images):
        path = builtin_json(images)
        image_root = image_root or builtin_image_root(images)
    else:
        path = Path(images)
    if image_root is None:
        known = _known(run_dir)
        if "image_root" in known:
            say(f"using the run's data.image_root={known['image_root']}")
            image_root = Path(known["image_root"])
    elif image_root.is_dir():
        remember_data(run_dir, {"image_root": str(image_root.resolve())}, say)
    return path, image_root


def default_image_root(run_dir: str | os.PathLike[str], image_root: Path | None, say: Say) -> Path | None:
    """``--image-root`` when given, else the run's remembered ``data.image_root`` (said), else None."""
    if image_root is not None:
        return image_root
    known = _known(run_dir)
    if "image_root" not in known:
        return None
    say(f"using the run's data.image_root={known['image_root']}")
    return Path(known["image_root"])


def _known(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    path = Path(run_dir)
    if not (path / "manifest.json").is_file():
        return {}
    return RunDir(path).datasets()


def register_data(
    run_dir: str | os.PathLike[str], values: Mapping[str, str | None], *, replace: bool = False
) -> list[str]:
    """``lvisctl data register``: check every given file first (nothing is recorded when one is wrong),
    then record them; returns the lines to print."""
    data = {k: v for k, v in values.items() if v}
    if not data:
        raise LvisctlError("data register: give at least one of --train, --val, --test, --image-root")
    found = given_data(data)
    for key, value in data.items():
        if key not in found:
            what = "folder" if key == "image_root" else "file"
            raise LvisctlError(f"{configured_path(data, key) or value}: no such {what} (data.{key})")
    run = RunDir(run_dir)
    known = run.datasets() if run.manifest_path.exists() else {}
    added = run.remember_datasets(found, replace=replace)
    lines = [f"{run.root}: remembers data.{k}={v}" for k, v in added.items()]
    kept = [k for k in found if k not in added and known.get(k) != found[k]]
    lines += [f"kept data.{k}={known[k]} (pass --replace to change it)" for k in kept]
    return lines
