"""Parse an LVIS file once per machine: its :class:`~lvisctl.data.lvis_store.LvisStore`, cached on disk.

Parsing and validating the 1.3 GB train json costs about a minute of CPU and 2.5 GB per process, and
every rank of a node, every run and every command that reads the file did it again. The cache keeps
the parsed, validated file as the store's numpy arrays in ``<cache dir>/<sha256 of the json>/``;
later loads memory-map them, so a second rank or run reads the file's hash and maps pages the
kernel already holds once for the whole node.

Trust. An entry is found by the sha256 of the json's bytes, computed on every load (the key is never
taken from a name or a timestamp), so a changed file is a miss and its old entry is removed. An entry
holds ``meta.json`` (format version, the source's hash and size, the categories and the crc32 and size
of every array file) and one ``.npy`` per array, loaded without pickle. Before an entry is used every
array file is checked against its crc32 and the arrays against each other; an entry that fails is
refused (one line names it and the problem), removed and rebuilt from the json. Entries are written
into a temporary folder and renamed into place, so a crashed writer leaves no entry; a lock file per
hash makes the ranks of a node wait for the one that parses instead of all parsing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lvisctl.data.lvis import ImageRoot, LvisData, load_lvis
from lvisctl.data.lvis_store import (
    ARRAY_DTYPES,
    LvisStore,
    open_store,
    serialize_lvis,
    small_fields,
    store_arrays,
    store_problems,
)
from lvisctl.errors import LvisctlError
from lvisctl.rundir.io import sha256_file

# Bump when the arrays' layout or load_lvis's validation changes: an entry of another format is a miss
# (an entry records a file that passed *that* version's checks).
CACHE_FORMAT = 1
CACHE_ENV = "LVISCTL_CACHE_DIR"  # a folder, or "off"
MIN_CACHED_BYTES = 32 << 20  # smaller files parse in about a second: not worth a copy on disk
_CRC_CHUNK = 1 << 24


class CacheDamaged(LvisctlError):
    """A cache entry that may not be used (unreadable, inconsistent or not matching its checksums)."""


def default_cache_dir() -> Path | None:
    """``$LVISCTL_CACHE_DIR`` (``off`` = no cache), else ``$XDG_CACHE_HOME/lvisctl/lvis`` (~/.cache)."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "lvisctl" / "lvis"


def load_lvis_shared(
    path: str | Path,
    *,
    image_root: str | Path | ImageRoot | None = None,
    cache_dir: str | Path | None = None,
    min_bytes: int | None = None,
) -> LvisStore:
    """``load_lvis(path)`` as an :class:`LvisStore` (no images checked), through the cache in ``cache_dir``.

    Files under ``min_bytes`` (default :data:`MIN_CACHED_BYTES`) or ``cache_dir=None`` are parsed and
    serialised in memory (still shared by DataLoader workers without copying). Raises the
    ``LvisctlError`` of ``load_lvis`` for a bad file.
    """
    path = Path(path)
    min_bytes = MIN_CACHED_BYTES if min_bytes is None else min_bytes
    if cache_dir is None or not path.is_file() or path.stat().st_size < min_bytes:
        return serialize_lvis(load_lvis(path, image_root=image_root))
    digest = sha256_file(path)
    cache_dir = Path(cache_dir)
    entry = cache_dir / digest
    store = _try_open(entry, digest, path, report=True)
    if store is None:
        with _entry_lock(cache_dir, digest):  # the ranks of a node: one parses, the others wait
            store = _try_open(entry, digest, path, report=False)  # built while this one waited?
            if store is None:
                data = load_lvis(path, image_root=image_root)
                write_entry(entry, data, digest, path.stat().st_size)
                del data  # the parsed records: gone before the entry is mapped
                _remove_stale(cache_dir, path, keep=digest)
                store = open_entry(entry, digest)
    return _with_root(store, path, image_root)


def _try_open(entry: Path, digest: str, source: Path, *, report: bool) -> LvisStore | None:
    """The entry's store; None when there is none or it is damaged (said in one line when ``report``)."""
    if not entry.is_dir():
        return None
    try:
        return open_entry(entry, digest)
    except CacheDamaged as err:
        if report:
            print(f"{err}; not used, parsing {source} again", file=sys.stderr, flush=True)
        return None


def _with_root(store: LvisStore, path: Path, image_root: str | Path | ImageRoot | None) -> LvisStore:
    """The entry's store with this load's path and image root (the entry is shared by every path)."""
    if isinstance(image_root, ImageRoot):
        store.image_root, store.image_root_source = image_root.path, image_root.source
    elif image_root is not None:
        store.image_root, store.image_root_source = Path(image_root).expanduser(), "--image-root"
    else:
        store.image_root, store.image_root_source = path.parent, "the json's folder"
    store.path = path
    return store


# ---------------------------------------------------------------------------------------- writing
def write_entry(entry: Path, data: LvisData, digest: str, source_bytes: int) -> None:
    """Write ``data``'s store as cache entry ``entry`` atomically (temporary folder, then rename)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a node's cache may serve several users
        files = {}
        for name, array in store_arrays(data).items():
            target = tmp / f"{name}.npy"
            np.save(target, array, allow_pickle=False)
            files[name] = {"bytes": target.stat().st_size, "crc32": _crc32(target)}
        fields = small_fields(data)
        meta = {
            "format": CACHE_FORMAT,
            "source_sha256": digest,
            "source_bytes": source_bytes,
            "source_path": str(Path(data.path).resolve()),
            "files": files,
            # categories keep their int keys as the records' own "id"
            "categories": list(fields["categories"].values()),
            "has_annotations": fields["has_annotations"],
            "info": fields["info"],
            "licenses": fields["licenses"],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        for file in tmp.iterdir():
            with open(file, "rb") as fh:  # durable before the rename publishes the entry
                os.fsync(fh.fileno())
        if entry.exists():  # a damaged entry being replaced
            shutil.rmtree(entry)
        os.rename(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(cache_dir: Path, source: Path, keep: str) -> None:
    """Drop entries made from an earlier version of the same file (the file changed: never used again)."""
    wanted = str(source.resolve())
    for meta_path in cache_dir.glob("*/meta.json"):
        if meta_path.parent.name == keep:
            continue
        with contextlib.suppress(OSError, ValueError):
            if json.loads(meta_path.read_text()).get("source_path") == wanted:
                shutil.rmtree(meta_path.parent, ignore_errors=True)


@contextlib.contextmanager
def _entry_lock(cache_dir: Path, digest: str) -> Iterator[None]:
    """One builder per hash on this machine; the others wait for it and then read its entry."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fh = open(cache_dir / f".{digest}.lock", "a+")
    except OSError as err:
        raise LvisctlError(f"{cache_dir}: cannot use the annotation cache ({err.strerror})") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------- reading
def open_entry(entry: Path, digest: str) -> LvisStore:
    """Memory-map a cache entry after checking it; raises :class:`CacheDamaged` naming what is wrong."""
    meta = _read_meta(entry, digest)
    arrays = {}
    for name in ARRAY_DTYPES:
        file = entry / f"{name}.npy"
        expected = meta["files"].get(name)
        if not isinstance(expected, dict) or not file.is_file():
            raise CacheDamaged(f"{file}: annotation cache file missing")
        if file.stat().st_size != expected.get("bytes") or _crc32(file) != expected.get("crc32"):
            raise CacheDamaged(
                f"{file}: annotation cache file damaged (size or crc32 differs from meta.json)"
            )
        try:
            arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CacheDamaged(f"{file}: annotation cache file unreadable ({err})") from None
    problems = store_problems(arrays)
    if problems:
        raise CacheDamaged(f"{entry}: annotation cache entry inconsistent ({'; '.join(problems[:3])})")
    fields = {
        "path": Path(meta["source_path"]),
        "image_root": Path(meta["source_path"]).parent,
        "categories": {int(c["id"]): c for c in meta["categories"]},
        "has_annotations": bool(meta["has_annotations"]),
        "info": meta["info"],
        "licenses": meta["licenses"],
    }
    return open_store(fields, arrays)


def _read_meta(entry: Path, digest: str) -> dict[str, Any]:
    meta_path = entry / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise CacheDamaged(f"{meta_path}: annotation cache entry unreadable ({err})") from None
    keys = ("format", "source_sha256", "files", "categories", "source_path", "has_annotations")
    if not isinstance(meta, dict) or any(k not in meta for k in keys) or not isinstance(meta["files"], dict):
        raise CacheDamaged(f"{meta_path}: annotation cache entry has no valid meta.json")
    if meta["format"] != CACHE_FORMAT:
        raise CacheDamaged(
            f"{meta_path}: annotation cache format {meta['format']}, this version reads {CACHE_FORMAT}"
        )
    if meta["source_sha256"] != digest:  # the folder name is not trusted on its own
        raise CacheDamaged(f"{meta_path}: annotation cache entry was made from another file")
    return meta


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc
