"""Phase locks: one writer per phase of a run directory, for the writing command's whole life.

``with run.phase_lock("stage1"):`` is taken before a command writes anything of that phase and released
when it exits. A second writer of the same phase stops at once with one line naming the holder (pid,
host, start time, command); readers never take it, so ``runs show``, ``evaluate`` etc. never block.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<run>/.locks/<phase>.lock``. The kernel drops it
when the holding process ends in any way, SIGKILL and crashes included, so a lock is never stuck; the
file keeps the holder's description, and a later writer that finds a description but no lock knows the
previous holder died and says so when it takes over. POSIX locks belong to the process (a forked
DataLoader worker does not inherit them, so a dead trainer's workers cannot keep its lock), and they work
on NFS. Under ``torchrun`` only rank 0 (``RANK`` unset or 0) takes the lock: the other ranks belong to
the same command.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from lvisctl.errors import LvisctlError

LOCK_DIR = ".locks"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# Locks this process holds, by file: the same phase taken again inside the command (e.g. a library
# function that locks what its caller already locked) is re-entrant instead of a self-conflict.
_HELD: dict[str, int] = {}


class PhaseLockedError(LvisctlError):
    """Another live process holds the phase."""


def lock_path(root: Path, phase: str) -> Path:
    return root / LOCK_DIR / f"{_SAFE.sub('_', phase)}.lock"


def current_command() -> str:
    """The command line of this process, as the user could type it again."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("lvisctl", "__main__.py", "app.py")):
        argv[0] = "lvisctl"
    return shlex.join(argv)


def _holder_text() -> str:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": current_command(),
        }
    )


def describe_holder(text: str) -> str:
    """``pid 123 on host h since 2026-...Z (lvisctl train ...)`` from a lock file's contents."""
    try:
        info = json.loads(text)
        desc = f"pid {info['pid']} on {info['host']} since {info['started']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "an unknown process"
    return desc + (f" ({info['command']})" if info.get("command") else "")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


@contextlib.contextmanager
def phase_lock(
    root: Path, phase: str, *, notify: Callable[[str], None] | None = None
) -> Iterator[Path | None]:
    """Hold the lock of ``phase`` in run directory ``root`` (created if needed) for the ``with`` body.

    Raises :class:`PhaseLockedError` at once when another live process holds it. ``notify`` receives
    the one-line note printed when a dead holder's lock is taken over (default: stderr).
    """
    if not _is_main_rank():
        yield None
        return
    path = lock_path(root, phase)
    key = str(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    created_root = not root.exists()
    fd = _open_lock_file(path)
    try:
        _acquire(fd, path, phase, root, notify or _to_stderr)
        _HELD[key] = 1
        try:
            yield path
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)  # an empty file = released cleanly (no takeover note for the next one)
    finally:
        os.close(fd)  # closing drops the POSIX lock
        if created_root:
            _remove_if_only_locks(root)


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as err:
        from lvisctl.rundir.io import write_error

        user = write_error(path, err)
        if user is None:
            raise
        raise user from None


def _acquire(fd: int, path: Path, phase: str, root: Path, notify: Callable[[str], None]) -> None:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = describe_holder(_read_fd(fd))
        raise PhaseLockedError(
            f"{root}: phase '{phase}' is being written by {holder}; wait for it to finish or stop it "
            f"(lock file {path})"
        ) from None
    previous = _read_fd(fd)
    if previous.strip():
        notify(
            f"note: {root}: phase '{phase}' was left locked by {describe_holder(previous)}, which ended "
            "without releasing it; taking over"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
    os.fsync(fd)


def _read_fd(fd: int) -> str:
    # Read through the lock's own descriptor: opening and closing the file again in this process would
    # drop a POSIX lock we hold.
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0).decode("utf-8", "replace") if size else ""


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _remove_if_only_locks(root: Path) -> None:
    """A command that failed before writing leaves no run directory behind just for its lock."""
    try:
        if all(p.name == LOCK_DIR for p in root.iterdir()):
            for f in (root / LOCK_DIR).iterdir():
                f.unlink()
            (root / LOCK_DIR).rmdir()
            root.rmdir()
    except OSError:
        pass  # someone else started writing here meanwhile: keep it


@contextlib.contextmanager
def file_lock(path: Path, *, what: str, where: Path) -> Iterator[Path | None]:
    """Hold a POSIX lock on ``path`` itself (an output's ``.<name>.lock``) for the ``with`` body; the file
    is removed on release, so no lock file is left next to the user's outputs.

    A second live holder is refused at once (:class:`PhaseLockedError`, naming it). A file left by a
    killed holder is simply locked again. Re-entrant within the process, rank 0 only, as ``phase_lock``.
    """
    key = str(path)
    if not _is_main_rank() or key in _HELD:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    fd = _lock_live_file(path, what, where)
    _HELD[key] = 1
    try:
        yield path
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):  # unlink before close: a waiting opener re-checks the inode
            path.unlink()
        os.close(fd)
        for folder in created:  # folders made only for the lock (the command failed): not left behind
            try:
                folder.rmdir()
            except OSError:
                break


def _lock_live_file(path: Path, what: str, where: Path) -> int:
    """Open and lock ``path``; retried when its holder removed it between our open and lock (then the
    lock would be on a file nobody else can see)."""
    while True:
        fd = _open_lock_file(path)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = describe_holder(_read_fd(fd))
            os.close(fd)
            raise PhaseLockedError(
                f"{where}: {what} is being written by {holder}; wait for it to finish or stop it "
                f"(lock file {path})"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
            return fd
        os.close(fd)
