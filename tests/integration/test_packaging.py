"""lvisctl works as users install it: a wheel (non-editable), an editable install (``make``), and a plain
checkout on PYTHONPATH. Configs and the LVIS category table are package data; nothing reads ``../shared``.

The installs go into fresh virtual environments without network: the wheel is built with the running
interpreter's setuptools (``--no-build-isolation``) and installed with ``--no-deps``; the dependencies
(torch is big) come from the running environment through a ``.pth`` line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("lvisctl", "configs", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in")


def _run(cmd: list, *, cwd: Path, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _source_copy(tmp: Path) -> Path:
    """The package sources as a checkout has them (a copy, so the build writes nothing into the repo)."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    return src


def _venv(path: Path) -> Path:
    """A fresh venv that sees the running environment's packages (the dependencies) after its own."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=path).strip()
    (Path(purelib) / "_lvisctl_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def _pip_install(python: Path, *args) -> None:
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index"]
    _run([*pip, *args], cwd=python.parent)


def test_the_checkout_finds_its_configs_and_category_table():
    from lvisctl.config import CONFIG_ROOT
    from lvisctl.data.synth import REAL_CATEGORIES_FILE

    assert CONFIG_ROOT == REPO / "configs"
    assert REAL_CATEGORIES_FILE.is_file() and REAL_CATEGORIES_FILE.is_relative_to(REPO / "lvisctl")


def test_nothing_in_the_package_reads_shared():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "lvisctl").rglob("*.py")
        if '"shared"' in p.read_text(encoding="utf-8") or "../shared" in p.read_text(encoding="utf-8")
    ]
    assert not offenders


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_synthesizes_lists_and_trains(tmp_path):
    src = _source_copy(tmp_path)
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            wheels,
            src,
        ],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("lvisctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "lvisctl/configs/base.yaml",
        "lvisctl/configs/_base_/model.yaml",
        "lvisctl/configs/stage1/r50_da_eql_rfs.yaml",
        "lvisctl/configs/stage2/large/_schedule.yaml",
        "lvisctl/data/lvis_v1_categories.json",
    } <= names
    assert not any(n.startswith("configs/") for n in names)

    python = _venv(tmp_path / "venv")
    _pip_install(python, wheel)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run([python, "-c", "import lvisctl.config as c; print(c.CONFIG_ROOT)"], cwd=outside).strip()
    assert Path(where).is_relative_to(tmp_path / "venv")
    lvisctl = tmp_path / "venv" / "bin" / "lvisctl"

    _run([lvisctl, "data", "synth", "--preset", "tiny", "--out", "data", "--real-categories"], cwd=outside)
    assert (outside / "data" / "lvis_v1_train.json").is_file()
    listed = _run([lvisctl, "configs", "list"], cwd=outside)
    assert "stage1/r50_da_eql_rfs" in listed
    trained = _run(
        [
            lvisctl,
            "train",
            "--stage",
            "1",
            "--config",
            "configs/demo/stage1.yaml",  # the README's spelling; no such file here: the packaged one
            "--run-dir",
            "run",
            "data.train=data/lvis_v1_train.json",
            "solver.max_iter=2",
            "train.num_workers=0",
        ],
        cwd=outside,
    )
    assert "stage 1 done after 2 iterations" in trained
    assert (outside / "run" / "checkpoints" / "stage1_final.pt").is_file()


@pytest.mark.slow
def test_editable_install_reads_the_checkout_configs(tmp_path):
    src = _source_copy(tmp_path)
    python = _venv(tmp_path / "venv")
    _pip_install(python, "--no-build-isolation", "-e", src)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    code = (
        "import lvisctl.config as c, lvisctl.data.synth as s; "
        "print(c.CONFIG_ROOT); assert s.REAL_CATEGORIES_FILE.is_file()"
    )
    assert Path(_run([python, "-c", code], cwd=outside).strip()) == src / "configs"
    shown = _run([tmp_path / "venv" / "bin" / "lvisctl", "configs", "show", "stage1/r50_da"], cwd=outside)
    assert f"# {src / 'configs' / 'stage1' / 'r50_da.yaml'}" in shown
