"""Atomic file writes and hashing.

Every file lvisctl writes goes through here: data is written to a temporary file in the destination
folder and renamed over the target only once complete, so an interrupted command never leaves a
half-written json, checkpoint or plot behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError

# File-system failures a user can fix (space, permissions, a file where a folder should be): reported as
# one line naming the file. Anything else is a bug and keeps its traceback.
_USER_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a parent path is a file, not a folder",
    errno.EEXIST: "a parent path is a file, not a folder",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "file name too long",
}


def write_error(path: str | os.PathLike[str], err: OSError) -> LvisctlError | None:
    """The one-line error for a failed write of ``path``, or None when ``err`` is not the user's to fix."""
    reason = _USER_ERRNOS.get(err.errno or -1)
    if reason is None:
        return None
    return LvisctlError(f"{path}: cannot write ({reason}); nothing was written there")


def os_error_line(err: OSError) -> str | None:
    """The one line for a file-system failure that reached the command line unconverted (a full disk
    under a library's own writer, a read-only folder, stdout closed or on /dev/full), or None when the
    error is not the user's to fix (then it keeps its traceback)."""
    reason = _USER_ERRNOS.get(err.errno or -1) or ("output closed" if err.errno == errno.EPIPE else None)
    if reason is None:
        return None
    where = err.filename if err.filename is not None else "output (standard output or a file)"
    return f"{where}: cannot write ({reason}); finished outputs are kept, nothing partial was published"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error deleted.

    For writers that want a file name (``torch.save``, ``savefig``, ``np.save``). A full disk, a
    read-only folder or a file in the way becomes one ``LvisctlError`` line; the target is untouched.
    """
    target = Path(path)
    if target.is_dir():
        raise LvisctlError(f"{target}: is a directory; --overwrite replaces files only, choose a file name")
    tmp: Path | None = None
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts are shared like any output
        yield tmp
        with open(tmp, "rb+") as fh:  # make the bytes durable before the rename publishes them
            os.fsync(fh.fileno())
        if _GROUPS:  # inside atomic_group(): published with the group's other files, or not at all
            _GROUPS[-1].append((tmp, target))
            tmp = None
        else:
            os.replace(tmp, target)
    except BaseException as err:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        _remove_empty(created)  # a failed write leaves no empty folder behind (e.g. a full disk)
        user = write_error(target, err) if isinstance(err, OSError) else None
        if user is None:
            raise
        raise user from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first
        try:
            folder.rmdir()
        except OSError:
            return


# Open atomic_group() blocks of this process: each holds (temporary file, target) pairs to publish.
_GROUPS: list[list[tuple[Path, Path]]] = []


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """Publish every file written with :func:`atomic_output` inside the block together at its end, or
    none of them: a command that writes several outputs (metrics json + csv + plot, a segm + bbox pair)
    and fails on the third (a full disk) leaves none of them, not two of three.
    """
    pending: list[tuple[Path, Path]] = []
    _GROUPS.append(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _GROUPS.remove(pending)
    for tmp, target in pending:
        try:
            os.replace(tmp, target)
        except OSError as err:
            for rest, _ in pending:
                rest.unlink(missing_ok=True)
            raise (write_error(target, err) or err) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as json atomically. ``indent=None`` writes compact json (large results files)."""
    separators = (",", ":") if indent is None else None
    return atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators) + "\n")


def read_json(path: str | os.PathLike[str], *, expect: type | None = None, what: str = "") -> Any:
    """Parse a json file, or raise the one-line error that says what is wrong with it.

    The one "read json or fail" of the code base: a missing file or a folder, bytes that are not UTF-8
    (with the offset), malformed json (line and column) and, with ``expect`` (``dict``/``list``), a
    top-level value of another type (``what`` names the expected content). A UTF-8 byte-order mark is
    accepted, as Python's own ``utf-8-sig`` codec does.
    """
    p = Path(path)
    if p.is_dir():
        raise LvisctlError(f"{p}: is a directory, not a json file")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise LvisctlError(f"{p}: file not found") from None
    except OSError as err:
        raise LvisctlError(f"{p}: cannot read ({err.strerror})") from None
    data = parse_json_bytes(raw, p)
    if expect is not None and not isinstance(data, expect):
        raise LvisctlError(f"{p}: {_top_level_problem(data, expect, what)}")
    return data


def decode_utf8(raw: bytes, path: object) -> str:
    """Text of a json file (BOM accepted); one line naming the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.start + 1].hex()
        raise LvisctlError(
            f"{path}: not UTF-8 text (byte 0x{bad} at offset {err.start}); json files must be UTF-8"
        ) from None


def parse_json_bytes(raw: bytes, path: object) -> Any:
    try:
        return json.loads(decode_utf8(raw, path))
    except json.JSONDecodeError as err:
        raise LvisctlError(
            f"{path}: not valid json ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except RecursionError:  # "[[[[..." 100k deep: Python's parser recurses per level
        raise LvisctlError(f"{path}: json nested too deeply to be an LVIS file") from None


def json_type_name(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _top_level_problem(data: Any, expect: type, what: str) -> str:
    wanted = json_type_name(expect())
    content = f" ({what})" if what else ""
    return f"valid json, but the top level is a {json_type_name(data)}; expected a json {wanted}{content}"


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """sha256 of a file; memoised per (path, size, mtime) within the process, since one command often
    registers several outputs made from the same large input (e.g. a 1 GB annotation file)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = _hash_file(path, chunk_size)
    return _SHA_CACHE[key]


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _hash_file(path: str | os.PathLike[str], chunk_size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
