"""The evaluator's numba kernels are compiled once per install and cached wherever the install allows:
next to the source, in numba's user-wide cache when site-packages is read-only (a wheel installed by an
administrator), and in a per-user temporary folder when the home directory is read-only too."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import lvisctl

PACKAGE = Path(lvisctl.__file__).resolve().parent
KERNELS = ("_parse_kernel", "_json_kernel", "_columns_kernel", "_gt_kernel", "_stream_kernel", "_eval_kernel")
# Compile the smallest kernel, then print whether this process loaded it from the cache.
PROBE = """
import numpy as np
from lvisctl.evaluation import _stream_kernel as k
out = np.zeros(8, np.int64)
assert k._decode_counts(np.frombuffer(b"52203", np.uint8), 0, 5, out) > 0
stats = k._decode_counts.stats
print("hits", sum(stats.cache_hits.values()), "misses", sum(stats.cache_misses.values()), stats.cache_path)
"""


def _run(code_or_module: list[str], env: dict[str, str], timeout: int = 300) -> str:
    # cwd: the temporary folder, so that `-c` does not import the checkout's lvisctl from the current folder
    proc = subprocess.run([sys.executable, *code_or_module], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=env["TMPDIR"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _env(tmp_path: Path, pythonpath: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")
    }
    return {**env, "PYTHONPATH": str(pythonpath), "HOME": str(tmp_path / "home"),
            "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp_path / "tmp"), **extra}  # fmt: skip


def _read_only_copy(tmp_path: Path) -> Path:
    """lvisctl as a wheel install into a site-packages nobody may write to."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "lvisctl", ignore=shutil.ignore_patterns("__pycache__"))
    # root ignores permission bits, so a plain file also stands where numba would make its in-tree cache
    (site / "lvisctl" / "evaluation" / "__pycache__").write_text("")
    for p in [site, *site.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    (tmp_path / "tmp").mkdir()
    return site


def _make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_read_only_site_packages_caches_in_numbas_user_wide_cache(tmp_path):
    site = _read_only_copy(tmp_path)
    try:
        env = _env(tmp_path, site, XDG_CACHE_HOME=str(tmp_path / "cache"))
        first = _run(["-c", PROBE], env)
        second = _run(["-c", PROBE], env)
    finally:
        _make_writable(site)
    assert "misses 1" in first and "hits 1" in second and "misses 0" in second, (first, second)
    assert list((tmp_path / "cache" / "numba").rglob("_stream_kernel._decode_counts-*.nbi"))
    assert not [p for p in site.rglob("*") if p.suffix in (".nbi", ".nbc")]


def test_read_only_home_too_falls_back_to_a_per_user_temporary_folder(tmp_path):
    """numba alone refuses here ("cannot cache function ...: no locator available")."""
    site = _read_only_copy(tmp_path)
    (tmp_path / "not-a-folder").write_text("")  # the user-wide cache cannot be created under a file
    try:
        env = _env(tmp_path, site, XDG_CACHE_HOME=str(tmp_path / "not-a-folder"))
        first = _run(["-c", PROBE], env)
        second = _run(["-c", PROBE], env)
    finally:
        _make_writable(site)
    assert "hits 1" in second and "misses 0" in second, (first, second)
    assert list(
        (tmp_path / "tmp" / f"lvisctl-numba-{os.getuid()}").rglob("_stream_kernel._decode_counts-*.nbi")
    )


def test_an_explicit_numba_cache_dir_is_left_alone(tmp_path, monkeypatch):
    from lvisctl.evaluation import numba_cache

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert numba_cache.ensure_cache_dir() is None
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.slow
def test_warm_up_compiles_and_caches_every_kernel(tmp_path):
    """What ``make install`` runs: afterwards every @njit kernel of both modules is in the cache."""
    env = _env(tmp_path, Path(lvisctl.__file__).resolve().parents[1], NUMBA_CACHE_DIR=str(tmp_path / "nc"))
    (tmp_path / "tmp").mkdir()
    out = _run(["-m", "lvisctl.evaluation.warmup"], env, timeout=900)
    assert "evaluation kernels compiled and cached" in out
    cached = {p.name.split("-")[0] for p in (tmp_path / "nc").rglob("*.nbi")}
    for module in KERNELS:
        source = (PACKAGE / "evaluation" / f"{module}.py").read_text()
        # (inline="always" ones are compiled into their callers, never on their own)
        names = re.findall(r"@njit\(cache=True(?![^)]*inline)[^)]*\)\s*\ndef (\w+)", source)
        assert names and {f"{module}.{n}" for n in names} <= cached, sorted(cached)
