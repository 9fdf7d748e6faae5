"""A one-pass, compiled screen of an LVIS results file, run beside the evaluator.

``evaluate`` parses the results once, in Rust (hotcoco), and hotcoco accepts what lvis-api would choke on or
silently mis-score: RLE strings with foreign characters, truncated strings, runs that do not add up to
exactly ``h * w`` (short runs leave pycocotools' mask partly unset), masks whose ``size`` is not their
image's, boxes with two negative sides (their area ``w * h`` looks fine). Parsing 1.5 M detections a second
time into Python objects costs more than the evaluation, so this module reads the raw bytes with a small
numba kernel instead (``_scan_kernel``, ~2 ns per byte): it walks the json structure, decodes every
compressed RLE exactly as pycocotools' ``rleFrString`` does (5-bit groups, continuation bit 0x20, sign bit
0x10, counts after the third stored as differences to the count two places back) and keeps, per detection,
its image id, RLE size and a few flags. :func:`start_scan` decodes in every file: hotcoco's mask areas catch
runs that overflow but not runs that stop short (``decode=False``, a check of the strings' characters 8
bytes at a time, remains for callers that vouch for the runs otherwise). What it cannot vouch for (escapes
other than ``\\\\``, a non-integer image id, a file that is not a list of objects, a ``-`` in a box's width
or height) marks the file *distrusted*; the caller then runs the full Python validator, which names the
problem.

The file is memory-mapped and scanned in place, block by block (scanned pages are released, so resident
memory stays about a block); the kernel keeps running totals and writes a row only where the image or the
RLE size changes (about one per image). :func:`start_scan` runs it in a forked process so that it
overlaps hotcoco's single-threaded json parse (which holds the GIL) where a core is free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Per-detection flags.
HAS_BBOX = 1
HAS_SEGMENTATION = 2
BAD_RLE = 4  # characters outside '0'..'o', a truncated number, a negative run, or runs beyond h*w
SEG_NOT_RLE = 8  # segmentation is not {"size": [h, w], "counts": str}
NO_IMAGE_ID = 16

# The kernel's running totals (one int64 array carried from block to block).
T_DETS, T_BBOX, T_SEGMENTATION, T_BAD_RLE, T_WITHOUT_IMAGE_ID = 0, 1, 2, 3, 4
T_IMG, T_H, T_W, T_KIND = 5, 6, 7, 8  # the last row written
T_CLOSED = 9  # the list's closing bracket was seen

_OK = 0  # kernel status: the block was fine (see _scan_kernel)

_KEY_IMAGE_ID = np.frombuffer(b"image_id", np.uint8)
_KEY_BBOX = np.frombuffer(b"bbox", np.uint8)
_KEY_SEGMENTATION = np.frombuffer(b"segmentation", np.uint8)
_KEY_SIZE = np.frombuffer(b"size", np.uint8)
_KEY_COUNTS = np.frombuffer(b"counts", np.uint8)
_KEY_SCORE = np.frombuffer(b"score", np.uint8)

BLOCK_BYTES = 32 << 20


@dataclass(frozen=True)
class ScanSummary:
    """What the screen found; every count is over the whole file."""

    num_dets: int
    num_bbox: int
    num_segmentation: int
    num_bad_rle: int  # BAD_RLE or SEG_NOT_RLE
    num_without_image_id: int
    distrusted: bool
    # Distinct (image_id, h, w) of the detections with an RLE; the caller checks them against the GT.
    image_sizes: np.ndarray  # (k, 3) int64
    image_ids: np.ndarray  # distinct image ids of all detections
    sha256: str = ""  # of the whole file (the run dir's integrity check, without a second read)
    rles_decoded: bool = True  # False: hotcoco's areas must vouch for the RLEs (see scan_results)


# ------------------------------------------------------------------------------------------ kernel
_KERNEL = None


def _kernel():
    """The compiled kernel (numba caches the machine code on disk after the first compile)."""
    global _KERNEL
    if _KERNEL is None:
        from lvisctl.evaluation._scan_kernel import scan_block

        _KERNEL = scan_block
    return _KERNEL


# ------------------------------------------------------------------------------------------ driver
def scan_results(
    path: str | os.PathLike[str], block_bytes: int = BLOCK_BYTES, *, sha256: bool = False, decode: bool = True
) -> ScanSummary:
    """Screen the results file at ``path`` block by block (memory: about one block, plus a row per image).

    ``sha256``: also hash the file (a run dir's integrity check, without reading it twice). ``decode``:
    decode the RLEs; pass False when hotcoco decodes them anyway (files without ``bbox``, whose mask areas
    it computes) and check its areas instead (``LoadedResults.verify``); the characters are checked either
    way.

    A big file is memory-mapped, not read: copying 500 MB out of the page cache costs more CPU than the
    scan of it. Blocks are handed to the kernel in place, and a block's pages are dropped from this
    process once scanned. Small files (and files that cannot be mapped) are read: a file truncated by
    someone else while mapped would kill the process with SIGBUS, harmless only in the forked screen
    (whose failure sends the file to the exact check), and small files are scanned inline.
    """
    kernel = _kernel()
    keys = (_KEY_IMAGE_ID, _KEY_BBOX, _KEY_SEGMENTATION, _KEY_SIZE, _KEY_COUNTS, _KEY_SCORE)
    digest = hashlib.sha256() if sha256 else None
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        mm = _map(fh, size)
        # Read-only either way: the kernel is compiled (and cached) for read-only arrays once.
        data = np.frombuffer(mm if mm is not None else fh.read(), dtype=np.uint8)
    try:
        parts, totals, distrusted = _scan_blocks(data, mm, kernel, keys, decode, block_bytes, digest)
    finally:
        del data
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # an exception's traceback still holds a view: the collector closes it
                pass
    return dataclasses.replace(_summarize(parts, totals, distrusted, _hex(digest)), rles_decoded=decode)


MAP_ABOVE_BYTES = 16 << 20  # the size from which start_scan forks, too


def _map(fh, size: int) -> mmap.mmap | None:
    if size <= MAP_ABOVE_BYTES:
        return None
    try:
        return mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    except (OSError, ValueError):  # not mappable (a pipe, some network filesystems): read it
        return None


def _hex(digest) -> str:
    return digest.hexdigest() if digest is not None else ""


def _scan_blocks(
    data: np.ndarray, mm: mmap.mmap | None, kernel, keys, decode: bool, block_bytes: int, digest
):
    """The block loop of :func:`scan_results`: (rows, totals, distrusted). ``mm``: ``data``'s mapping."""
    size = len(data)
    if size == 0:  # an empty file is no json list
        return [], np.zeros(10, np.int64), True
    cap = 1 << 14  # rows: about one per image
    cols = [np.empty(cap, np.int64) for _ in range(4)]
    totals = np.zeros(10, np.int64)
    totals[T_KIND] = -1  # no row yet
    parts: list[tuple[np.ndarray, ...]] = []
    pos, hashed, dropped, first, block = 0, 0, 0, True, block_bytes
    while pos < size:
        base = pos & ~7  # the kernel reads 8-byte words: blocks start aligned
        end = min(size, base + block)
        if mm is not None:
            _populate(mm, base, end)
        count, consumed, status = kernel(data[base:end], pos - base, first, *cols, totals, keys, decode)
        parts.append(tuple(c[:count].copy() for c in cols))
        if digest is not None and end > hashed:  # hash while the block is in the cache
            digest.update(data[hashed:end])
            hashed = end
        if status != _OK:
            if digest is not None:
                digest.update(data[hashed:])  # the hash still covers the whole file
            return parts, totals, True
        new_pos = base + consumed
        first = first and new_pos == pos
        if new_pos == pos:  # nothing complete in the block
            if end == size:  # a detection cut off, or bytes after the list
                return parts, totals, bool(bytes(data[pos:size]).strip()) or not totals[T_CLOSED]
            block *= 2  # a "detection" longer than a block: grow
            continue
        if mm is not None:
            dropped = _drop_pages(mm, dropped, new_pos)
        pos, block = new_pos, block_bytes
    return parts, totals, not totals[T_CLOSED]


def _populate(mm: mmap.mmap, start: int, end: int) -> None:
    """Map a block's pages in one call (MADV_POPULATE_READ, Linux 5.14+) instead of a fault per page run."""
    start -= start % mmap.PAGESIZE
    try:
        mm.madvise(_MADV_POPULATE_READ, start, end - start)
    except (OSError, AttributeError, ValueError):  # older kernels: the pages fault in as read
        pass


_MADV_POPULATE_READ = 22


def _drop_pages(mm: mmap.mmap, start: int, upto: int) -> int:
    """Release the scanned pages ``[start, upto)`` from this process (the page cache keeps them), so its
    resident memory stays about a block; returns where the next release starts."""
    end = upto - upto % mmap.PAGESIZE
    if end > start and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        return end
    return start


def _summarize(parts, totals: np.ndarray, distrusted: bool, sha256: str = "") -> ScanSummary:
    if parts:
        ids, hs, ws, kinds = (np.concatenate(col) for col in zip(*parts, strict=True))
    else:
        ids = hs = ws = kinds = np.zeros(0, np.int64)
    rle = ((kinds & HAS_SEGMENTATION) != 0) & ((kinds & SEG_NOT_RLE) == 0)
    return ScanSummary(
        num_dets=int(totals[T_DETS]),
        num_bbox=int(totals[T_BBOX]),
        num_segmentation=int(totals[T_SEGMENTATION]),
        num_bad_rle=int(totals[T_BAD_RLE]),
        num_without_image_id=int(totals[T_WITHOUT_IMAGE_ID]),
        distrusted=distrusted,
        image_sizes=_distinct_rows(np.stack([ids[rle], hs[rle], ws[rle]], axis=1)),
        image_ids=_distinct_rows(ids[(kinds & NO_IMAGE_ID) == 0][:, None])[:, 0],
        sha256=sha256,
    )


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """``np.unique(rows, axis=0)``, after dropping repeats of the previous row: results files list an
    image's detections together, so this leaves ~one row per image and the sort is cheap."""
    if len(rows) == 0:
        return rows.reshape(0, rows.shape[1])
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = (rows[1:] != rows[:-1]).any(axis=1)
    return np.unique(rows[keep], axis=0)


# ------------------------------------------------------------------------------- in a side process
class ScanJob:
    """A :func:`scan_results` running in a forked process; :meth:`result` waits for it.

    A failed side process (numba missing, a crash) gives ``None``: the caller then validates in Python.
    """

    def __init__(self, path: Path, *, fork: bool = True, sha256: bool = False, decode: bool = True) -> None:
        self._value: ScanSummary | None = None
        self._pid = 0
        self._fd = -1
        if not fork:
            self._value = _scan_or_none(path, sha256, decode)
            return
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: scan, send the summary, leave without running the parent's cleanup
            code = 1
            try:
                os.close(read_fd)
                payload = pickle.dumps(_scan_or_none(path, sha256, decode), protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(write_fd, "wb") as out:
                    out.write(payload)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self._pid, self._fd = pid, read_fd

    def result(self) -> ScanSummary | None:
        if self._fd < 0:
            return self._value
        with os.fdopen(self._fd, "rb") as fh:
            payload = fh.read()
        self._fd = -1
        _, status = os.waitpid(self._pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not payload:
            return None
        self._value = pickle.loads(payload)
        return self._value

    def cancel(self) -> None:
        """Stop waiting for the side process (an error elsewhere ended the command)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            os.waitpid(self._pid, 0)


def _scan_or_none(path: Path, sha256: bool, decode: bool) -> ScanSummary | None:
    try:
        return scan_results(path, sha256=sha256, decode=decode)
    except ImportError:  # numba missing: the caller falls back to the Python validator
        return None


def start_scan(
    path: str | os.PathLike[str], *, sha256: bool = False, fork_above_bytes: int = MAP_ABOVE_BYTES
) -> ScanJob:
    """Start screening ``path``: in a forked process for big files, inline for small ones (fork costs).

    RLEs are always decoded: hotcoco's mask areas catch runs that overflow ``h * w`` but not runs that
    stop short of it (the rest of such a mask is undefined; the GT loader refuses it too).
    """
    p = Path(path)
    big = p.stat().st_size > fork_above_bytes
    return ScanJob(p, fork=big and hasattr(os, "fork"), sha256=sha256, decode=True)


_FIRST_DET_END = re.compile(rb"\}\s*,\s*\{|\}\s*\]")


def first_detection_keys(path: str | os.PathLike[str], head_bytes: int = 1 << 20) -> tuple[bool, bool, bool]:
    """(is a json list, first detection has 'bbox', has 'segmentation'), from the first bytes only.

    The screen checks later that every detection has the same fields; this is enough to pick the note,
    the "no segmentation" error and whether to decode RLEs before the evaluation starts.
    """
    with open(path, "rb") as fh:
        head = fh.read(head_bytes)
    if not head.lstrip().startswith(b"["):
        return False, False, False
    match = _FIRST_DET_END.search(head)  # '}' cannot occur in an RLE string
    first = head[: match.start() + 1] if match else head
    return True, b'"bbox"' in first, b'"segmentation"' in first


def scan_problems(scan: ScanSummary, num_dets: int, sizes: dict[int, tuple[int, int]]) -> list[str]:
    """Why the screen distrusts the file (empty when it vouches for it); ``sizes`` are the GT's."""
    reasons = []
    if scan.distrusted:
        reasons.append("unusual json layout")
    if scan.num_dets != num_dets:
        reasons.append("detection count differs from the evaluator's")
    if scan.num_without_image_id:
        reasons.append("detections without image_id")
    if scan.num_bbox not in (0, scan.num_dets):
        reasons.append("bbox on some detections only")
    if scan.num_segmentation not in (0, scan.num_dets):
        reasons.append("segmentation on some detections only")
    if scan.num_bad_rle:
        reasons.append("invalid RLE")
    if any(int(i) not in sizes for i in scan.image_ids):
        reasons.append("unknown image ids")
    elif any(sizes[int(i)] != (int(h), int(w)) for i, h, w in scan.image_sizes):
        reasons.append("RLE size differs from image size")
    return reasons
