"""benchmarks/gpu_check.sh's preamble: which python it runs, and ``--wheels DIR`` (install what is missing
from a folder, offline, never replacing torch). A stub python records how the script calls it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
# Answers the script's version query like a GPU machine's python, logs every call (and the constraints file
# pip gets), and succeeds at everything else.
STUB = """#!/usr/bin/env bash
echo "CALL $0 $*" >>"$STUB_LOG"
if [[ "$1" == "-c" ]]; then printf 'torch==2.11.0\\ntorchvision==0.26.0\\nnumpy==2.1.0\\n'; fi
if [[ "$1 $2" == "-m pip" ]]; then
    while [[ $# -gt 0 ]]; do [[ "$1" == "-c" ]] && sed 's/^/HELD /' "$2" >>"$STUB_LOG"; shift; done
fi
exit "${STUB_EXIT:-0}"
"""


def _repo_copy(tmp_path: Path, with_venv: bool) -> Path:
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "benchmarks" / "gpu_check.sh")
    if with_venv:
        _stub(repo / ".venv" / "bin" / "python")
    return repo


def _stub(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STUB)
    path.chmod(0o755)
    return path


def _run(repo: Path, tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "calls.log"
    full = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    full.update(STUB_LOG=str(log), GPU_CHECK_WORKDIR=str(tmp_path / "work"), **env)
    proc = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), *args], env=full,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return proc, log.read_text() if log.exists() else ""


def test_uses_the_repositorys_venv_without_activating_it(tmp_path):
    repo = _repo_copy(tmp_path, with_venv=True)
    proc, calls = _run(repo, tmp_path, "--cpu", STUB_EXIT="3")
    assert proc.returncode == 3
    assert f"CALL {repo}/.venv/bin/python - cpu" in calls


def test_python_variable_wins_over_the_venv(tmp_path):
    repo = _repo_copy(tmp_path, with_venv=True)
    mine = _stub(tmp_path / "mine" / "python")
    proc, calls = _run(repo, tmp_path, "--cpu", PYTHON=str(mine), STUB_EXIT="3")
    assert f"CALL {mine} - cpu" in calls and ".venv" not in calls


def test_wheels_installs_the_folders_packages_offline_holding_torch(tmp_path):
    repo = _repo_copy(tmp_path, with_venv=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    names = ("hotcoco-1.3.0-cp310-abi3-manylinux_2_17_x86_64.whl", "pycocotools-2.0.11-cp312-abi3-any.whl")
    for name in (*names, "python_dateutil-4.0.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    proc, calls = _run(repo, tmp_path, "--cpu", "--wheels", str(wheels))
    assert proc.returncode == 0, proc.stderr
    pip = next(line for line in calls.splitlines() if " -m pip install " in line)
    assert "--no-index" in pip and f"--find-links {wheels}" in pip
    assert pip.split()[-3:] == ["hotcoco", "pycocotools", "python_dateutil"]
    assert {"HELD torch==2.11.0", "HELD torchvision==0.26.0", "HELD numpy==2.1.0"} <= set(calls.splitlines())
    # the install comes before the check itself
    assert calls.index(" -m pip install ") < calls.index(" - cpu")


def test_wheels_needs_a_folder_of_wheels(tmp_path):
    repo = _repo_copy(tmp_path, with_venv=True)
    (tmp_path / "empty").mkdir()
    for args in (
        ["--wheels"],
        ["--wheels", str(tmp_path / "missing")],
        ["--wheels", str(tmp_path / "empty")],
    ):
        proc, calls = _run(repo, tmp_path, "--cpu", *args)
        assert proc.returncode == 2, args
        assert proc.stderr.count("\n") == 1 and (
            "usage:" in proc.stderr or "not a folder of wheels" in proc.stderr
        )
        assert calls == ""  # nothing ran, nothing installed
