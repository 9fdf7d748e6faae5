"""One strict pass over a results file that both validates it and yields what the evaluation needs.

``evaluate`` used to parse a results file twice: hotcoco parsed it for the numbers and a compiled screen
walked it again for what hotcoco does not check. :func:`parse_results` does both in one pass with the
numba kernel of ``_parse_kernel`` (memory-mapped, no Python object per detection), on every core at
once: the file is cut at detection boundaries (``},{``) and each part read by its own thread. A part
must end exactly where the next one starts, otherwise the cut was not a boundary (a ``},{`` inside a
string) and the rest is read in one piece, so the columns are those of one sequential read.

It vouches only for files that ``results_io.validate_results`` would accept (see :func:`vouch`); for
anything else it returns ``None`` and the caller takes the exact route, which names the problem.
"""

from __future__ import annotations

import hashlib
import importlib
import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvisctl.evaluation.results_io import ImageTable

PARALLEL_ABOVE_BYTES = 8 << 20  # smaller files are read by one thread
_CHUNK_ROWS = 1 << 18
_CHUNK_FIXUPS = 1 << 16
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")


def worker_count() -> int:
    """The cores this process may run on (threads of the parse and the evaluation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class ParsedResults:
    """A results file as columns (one row per detection, in file order); RLE strings stay in ``buf``."""

    path: Path
    buf: np.ndarray  # the file's bytes (memory-mapped)
    ints: np.ndarray  # [n, N_INT_COLS] int64, see _parse_kernel.C_*
    flt: np.ndarray  # [n, N_FLOAT_COLS] float64, see _parse_kernel.F_*
    has_bbox: bool
    has_segmentation: bool
    sha256: str = ""

    @property
    def num_dets(self) -> int:
        return len(self.ints)


def _keys() -> tuple[np.ndarray, ...]:
    names = (b"image_id", b"category_id", b"score", b"bbox", b"segmentation", b"size", b"counts")
    return tuple(np.frombuffer(k, np.uint8) for k in names)


_MADV_POPULATE_READ = 22  # Linux 5.14+: map a range's pages in one call instead of a fault per page


def _populate(mm: mmap.mmap | None, start: int, stop: int) -> None:
    if mm is None or stop <= start:
        return
    start -= start % mmap.PAGESIZE
    try:
        mm.madvise(_MADV_POPULATE_READ, start, stop - start)
    except (OSError, AttributeError, ValueError):  # older kernels: the pages fault in as read
        pass


def _read_part(buf: np.ndarray, start: int, stop: int, out: list, mm: mmap.mmap | None = None) -> None:
    """Read the detections starting in ``[start, stop)``; appends (ints, flt, fixes, end, status, closed).
    ``mm``: ``buf``'s mapping, whose pages are mapped in one call first (a page fault each cost more
    system time than the whole evaluation's share of it)."""
    from lvisctl.evaluation import _parse_kernel as K

    _populate(mm, start, min(len(buf), stop + (1 << 16)))
    chunks, pos, first, keys = [], start, start == 0, _keys()
    while True:
        ints = np.empty((_CHUNK_ROWS, K.N_INT_COLS), np.int64)
        flt = np.empty((_CHUNK_ROWS, K.N_FLOAT_COLS), np.float64)
        fix_idx = np.empty((_CHUNK_FIXUPS, 2), np.int64)
        fix_txt = np.empty((_CHUNK_FIXUPS, K.FIX_TEXT), np.uint8)
        rows, nfix, pos, status, closed = K.parse_part(
            buf, pos, stop, first, ints, flt, fix_idx, fix_txt, keys
        )
        first = False
        chunks.append((ints[:rows], flt[:rows], fix_idx[:nfix], fix_txt[:nfix]))
        if status != K.FULL:
            out.append((chunks, pos, status, closed))
            return


def _cuts(buf: np.ndarray, mm: mmap.mmap, parts: int) -> list[int]:
    """Start positions of ``parts`` pieces: the ``{`` of a detection found after each even share."""
    size = len(buf)
    cuts = [0]
    for k in range(1, parts):
        target = max(k * size // parts, cuts[-1] + 1)
        found = _BOUNDARY.search(mm, target, min(size, target + (4 << 20)))
        if found is None:
            break
        cuts.append(found.end() - 1)
    return [*cuts, size]


def _assemble(chunks: list) -> tuple[np.ndarray, np.ndarray]:
    from lvisctl.evaluation import _parse_kernel as K

    ints = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, K.N_INT_COLS), np.int64)
    flt = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, K.N_FLOAT_COLS))
    base = 0
    for c_ints, _, fix_idx, fix_txt in chunks:
        if len(fix_idx):
            # numpy converts decimal text exactly rounded, as Python's float() does
            values = np.ascontiguousarray(fix_txt).view(f"S{K.FIX_TEXT}")[:, 0].astype(np.float64)
            flt[fix_idx[:, 0] + base, fix_idx[:, 1]] = values
        base += len(c_ints)
    return ints, flt


def _hash_file(path: Path, out: list) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):  # hashlib releases the GIL for large updates
            digest.update(block)
    out.append(digest.hexdigest())


def parse_results(path: str | os.PathLike[str], *, sha256: bool = False) -> ParsedResults | None:
    """Columns of the results file at ``path``, or None where the strict reader does not vouch for it."""
    try:  # (loaded before any thread starts; import_module, not the package attribute, sees a blocked one)
        importlib.import_module("lvisctl.evaluation._parse_kernel")
    except ImportError:  # numba missing: the caller takes the route that needs no compiled code
        return None
    p = Path(path)
    with open(p, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return None
        mm = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    hashed: list[str] = []
    hasher = threading.Thread(target=_hash_file, args=(p, hashed)) if sha256 else None
    if hasher is not None:
        hasher.start()
    buf = np.frombuffer(mm, dtype=np.uint8)
    try:
        from lvisctl.evaluation import _parse_kernel as K

        parts = worker_count() if size > PARALLEL_ABOVE_BYTES else 1
        cuts = _cuts(buf, mm, parts)
        results: list[list] = [[] for _ in cuts[:-1]]
        threads = [
            threading.Thread(target=_read_part, args=(buf, cuts[k], cuts[k + 1], results[k], mm))
            for k in range(1, len(cuts) - 1)
        ]
        for t in threads:
            t.start()
        _read_part(buf, cuts[0], cuts[1], results[0], mm)
        for t in threads:
            t.join()
        chunks: list = []
        for k, ((part_chunks, end, status, closed),) in enumerate(results):
            chunks += part_chunks
            if status == K.DISTRUST:
                return None
            if k + 1 < len(results) and end != cuts[k + 1]:  # not a boundary: read the rest in one piece
                rest: list = []
                _read_part_from(buf, end, rest)
                (part_chunks, end, status, closed) = rest[0]
                chunks += part_chunks
                if status == K.DISTRUST or not closed:
                    return None
                break
            if k + 1 == len(results) and not closed:
                return None
        ints, flt = _assemble(chunks)
    finally:
        if hasher is not None:
            hasher.join()
    flags = ints[:, K.C_FLAGS]
    has_bbox = int(np.count_nonzero(flags & K.HAS_BBOX))
    has_seg = int(np.count_nonzero(flags & K.HAS_SEGMENTATION))
    if has_bbox not in (0, len(ints)) or has_seg not in (0, len(ints)):
        return None  # bbox / segmentation on some detections only
    return ParsedResults(p, buf, ints, flt, bool(has_bbox), bool(has_seg), hashed[0] if hashed else "")


def _read_part_from(buf: np.ndarray, start: int, out: list) -> None:
    """Read from ``start`` (a detection's ``{``, or the list's end) to the end of the file."""
    from lvisctl.evaluation import _parse_kernel as K

    if start >= len(buf) or buf[start] != ord("{"):
        # the previous part stopped at the list's end or at something it could not read
        out.append(([], start, K.DISTRUST, False))
        return
    _read_part(buf, start, len(buf), out)


def vouch(parsed: ParsedResults, table: ImageTable, gt_image_ids: np.ndarray, gt_cat_ids: np.ndarray) -> bool:
    """Whether ``results_io.validate_results`` would accept the parsed file for the GT ``table``: known
    image and category ids, finite scores, boxes of 4 finite numbers with no negative side, RLE sizes
    equal to the image's (the kernel checked the json, the RLE strings and their runs).
    ``gt_image_ids`` / ``gt_cat_ids``: the GT's ids, sorted."""
    from lvisctl.evaluation import _parse_kernel as K

    ints, flt = parsed.ints, parsed.flt
    img, cat = ints[:, K.C_IMG], ints[:, K.C_CAT]
    if not np.isfinite(flt[:, K.F_SCORE]).all():
        return False
    if not _all_in(img, gt_image_ids) or not _all_in(cat, gt_cat_ids):
        return False
    if parsed.has_bbox:
        box = flt[:, K.F_X : K.F_H + 1]
        if not np.isfinite(box).all() or (box[:, 2:] < 0).any():
            return False
    if parsed.has_segmentation:
        heights = np.array([table.sizes[int(i)][0] for i in gt_image_ids], np.int64)
        widths = np.array([table.sizes[int(i)][1] for i in gt_image_ids], np.int64)
        at = np.searchsorted(gt_image_ids, img)
        if (ints[:, K.C_H] != heights[at]).any() or (ints[:, K.C_W] != widths[at]).any():
            return False
    return True


def reader_vouches(path: str | os.PathLike[str], table: ImageTable) -> bool:
    """Whether the strict reader vouches for the results file at ``path`` against ``table`` (False also
    where numba is missing: the exact route then checks the file)."""
    parsed = parse_results(path)
    if parsed is None:
        return False
    image_ids = np.array(sorted(table.sizes), np.int64)
    return vouch(parsed, table, image_ids, np.array(sorted(table.cat_ids), np.int64))


def _all_in(values: np.ndarray, sorted_ids: np.ndarray) -> bool:
    if len(sorted_ids) == 0:
        return len(values) == 0
    at = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return bool((sorted_ids[at] == values).all())
