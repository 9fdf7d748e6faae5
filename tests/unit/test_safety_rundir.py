"""Run-directory safety (issue 9 items 2, 9, 12, 15): phase locks, one json reader, write failures as
one line, damaged manifests, paths that leave the run directory."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lvisctl.errors import LvisctlError
from lvisctl.rundir import PhaseLockedError, RunDir, atomic_output, atomic_write_json, read_json

REPO = Path(__file__).resolve().parents[2]


def _holder(root: Path, phase: str, ready: Path) -> subprocess.Popen:
    """A separate process that takes ``phase`` and sleeps (a second command writing the run dir)."""
    code = textwrap.dedent(
        f"""
        import pathlib, time
        from lvisctl.rundir import RunDir
        with RunDir({str(root)!r}).phase_lock({phase!r}):
            pathlib.Path({str(ready)!r}).write_text("x")
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RANK", None)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    for _ in range(300):
        if ready.exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("lock holder did not start")


# ------------------------------------------------------------------------------------------ item 2
def test_second_writer_of_a_phase_stops_at_once_naming_the_holder(tmp_path):
    proc = _holder(tmp_path / "run", "stage1", tmp_path / "ready")
    try:
        start = time.monotonic()
        with pytest.raises(PhaseLockedError) as err:
            with RunDir(tmp_path / "run").phase_lock("stage1"):
                pytest.fail("a second writer got the lock")
        assert time.monotonic() - start < 2  # at once, no waiting
        msg = str(err.value)
        assert f"pid {proc.pid} on " in msg and " since 20" in msg and "phase 'stage1'" in msg
        assert "\n" not in msg
        # another phase of the same run directory is free, and readers never block
        with RunDir(tmp_path / "run").phase_lock("stage2"):
            assert RunDir(tmp_path / "run").artifacts() == []
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_holder_is_taken_over_with_a_note(tmp_path):
    proc = _holder(tmp_path / "run", "stage1", tmp_path / "ready")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    notes: list[str] = []
    with RunDir(tmp_path / "run").phase_lock("stage1", notify=notes.append):
        pass
    assert len(notes) == 1 and f"pid {proc.pid}" in notes[0] and "taking over" in notes[0]
    # released cleanly this time: the next writer gets it without a note
    with RunDir(tmp_path / "run").phase_lock("stage1", notify=notes.append):
        pass
    assert len(notes) == 1


def test_lock_is_reentrant_in_one_process_and_released_at_exit(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.phase_lock("x"):
        with run.phase_lock("x"):  # a layer function locking what its caller already holds
            pass
        # still held by us after the inner exit: another process is refused
        code = f"from lvisctl.rundir import RunDir\nwith RunDir({str(run.root)!r}).phase_lock('x'): pass"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode != 0 and "is being written by pid" in out.stderr
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_command_that_fails_before_writing_leaves_no_run_dir_for_its_lock(tmp_path):
    with pytest.raises(LvisctlError):
        with RunDir(tmp_path / "new").phase_lock("stage1"):
            raise LvisctlError("bad input")
    assert not (tmp_path / "new").exists()


def test_torchrun_ranks_other_than_0_do_not_lock(tmp_path, monkeypatch):
    proc = _holder(tmp_path / "run", "stage1", tmp_path / "ready")
    try:
        monkeypatch.setenv("RANK", "1")
        with RunDir(tmp_path / "run").phase_lock("stage1") as path:
            assert path is None
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------------ item 9
def test_read_json_says_what_is_wrong(tmp_path):
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode())
    assert read_json(bom) == {"a": 1}
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(LvisctlError, match=r"latin.json: not UTF-8 text \(byte 0xe9 at offset 13\)"):
        read_json(latin)
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(LvisctlError, match="valid json, but the top level is a list; expected a json object"):
        read_json(lst, expect=dict)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n  oops}')
    with pytest.raises(LvisctlError, match=r"bad.json: not valid json \(.* at line 2 column 3\)"):
        read_json(bad)
    with pytest.raises(LvisctlError, match="is a directory"):
        read_json(tmp_path)
    with pytest.raises(LvisctlError, match="file not found"):
        read_json(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------ item 12
@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system")],
)
def test_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, code, reason):
    target = tmp_path / "out" / "m.json"
    target.parent.mkdir()
    target.write_text("old")

    def failing_replace(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(LvisctlError) as err:
        atomic_write_json(target, {"AP": 1})
    assert str(err.value) == f"{target}: cannot write ({reason}); nothing was written there"
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["m.json"]


def test_disk_full_while_writing_the_temporary_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    with pytest.raises(LvisctlError, match="no space left on device"):
        with atomic_output(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_target_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(LvisctlError, match="metrics.json: is a directory; --overwrite replaces files only"):
        atomic_write_json(tmp_path / "metrics.json", {})


def test_run_dir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LvisctlError, match=r"afile/sub: cannot be created: .*afile is a file, not a folder"):
        RunDir(tmp_path / "afile" / "sub")


def test_manifest_entry_without_sha256_is_one_line(tmp_path):
    run = RunDir(tmp_path)
    run.register("log", atomic_write_json(tmp_path / "a.json", {}))
    data = json.loads(run.manifest_path.read_text())
    del data["artifacts"][0]["sha256"]
    run.manifest_path.write_text(json.dumps(data))
    with pytest.raises(LvisctlError, match=r"artifact entry 0 \(a.json\) lacks a valid 'sha256'"):
        run.artifacts()


# ------------------------------------------------------------------------------------------ item 15
def test_manifest_paths_that_leave_the_run_dir_are_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    run.register("log", atomic_write_json(run.root / "a.json", {}))
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    data = json.loads(run.manifest_path.read_text())
    data["artifacts"][0]["path"] = "../secret.txt"
    run.manifest_path.write_text(json.dumps(data))
    art = run.artifacts()[0]
    with pytest.raises(LvisctlError, match=r"path '../secret.txt' leaves the run directory"):
        run.resolve(art)
    assert run.path_of("sub/../a.json") == run.root / "sub/../a.json"  # inside: fine


def test_atomic_group_publishes_all_outputs_or_none(tmp_path):
    from lvisctl.rundir import atomic_group, atomic_write_text

    with pytest.raises(LvisctlError, match="no space left on device"):
        with atomic_group():
            atomic_write_text(tmp_path / "metrics.json", "{}")
            atomic_write_text(tmp_path / "per_category.csv", "a,b")
            with atomic_output(tmp_path / "plot.png"):
                raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # not two of three
    with atomic_group():
        atomic_write_text(tmp_path / "a.json", "1")
        assert not (tmp_path / "a.json").exists()  # published at the end of the group
        atomic_write_text(tmp_path / "b.json", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
