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
from functools import cached_property
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
    """A results file as columns (one row per detection, in file order); RLE strings stay in ``buf``.

    The rows come in the chunks the reader's threads wrote (``chunks``: (ints, flt) pairs in file order);
    ``ints`` / ``flt`` join them on first use (the evaluation reads the chunks, not a joined copy)."""

    path: Path
    buf: np.ndarray  # the file's bytes (memory-mapped)
    chunks: list[tuple[np.ndarray, np.ndarray]]  # [rows, N_INT_COLS] int64, [rows, N_FLOAT_COLS] float64
    has_bbox: bool
    has_segmentation: bool
    sha256: str = ""

    @property
    def num_dets(self) -> int:
        return sum(len(c[0]) for c in self.chunks)

    @cached_property
    def ints(self) -> np.ndarray:
        """[n, N_INT_COLS] int64, see _parse_kernel.C_*"""
        from lvisctl.evaluation import _parse_kernel as K

        return _join([c[0] for c in self.chunks], (0, K.N_INT_COLS), np.int64)

    @cached_property
    def flt(self) -> np.ndarray:
        """[n, N_FLOAT_COLS] float64, see _parse_kernel.F_*"""
        from lvisctl.evaluation import _parse_kernel as K

        return _join([c[1] for c in self.chunks], (0, K.N_FLOAT_COLS), np.float64)


def _join(parts: list[np.ndarray], empty: tuple[int, int], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty, dtype)


def _keys() -> np.ndarray:
    from lvisctl.evaluation import _parse_kernel as K

    return K.key_table()


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


def _apply_fixups(chunks: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """The chunks' (ints, flt), the numbers handed back as text converted in place."""
    from lvisctl.evaluation import _parse_kernel as K

    out = []
    for c_ints, c_flt, fix_idx, fix_txt in chunks:
        if len(fix_idx):
            # numpy converts decimal text exactly rounded, as Python's float() does
            values = np.ascontiguousarray(fix_txt).view(f"S{K.FIX_TEXT}")[:, 0].astype(np.float64)
            c_flt[fix_idx[:, 0], fix_idx[:, 1]] = values
        out.append((c_ints, c_flt))
    return out


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
        pairs = _apply_fixups(chunks)
    finally:
        if hasher is not None:
            hasher.join()
    pairs = [pair for pair in pairs if len(pair[0])]
    flags = int(pairs[0][0][0, K.C_FLAGS]) if pairs else 0
    if any(np.count_nonzero(c_ints[:, K.C_FLAGS] != flags) for c_ints, _ in pairs):
        return None  # bbox / segmentation on some detections only
    has_bbox, has_seg = bool(flags & K.HAS_BBOX), bool(flags & K.HAS_SEGMENTATION)
    return ParsedResults(p, buf, pairs, has_bbox, has_seg, hashed[0] if hashed else "")


def _read_part_from(buf: np.ndarray, start: int, out: list) -> None:
    """Read from ``start`` (a detection's ``{``, or the list's end) to the end of the file."""
    from lvisctl.evaluation import _parse_kernel as K

    if start >= len(buf) or buf[start] != ord("{"):
        # the previous part stopped at the list's end or at something it could not read
        out.append(([], start, K.DISTRUST, False))
        return
    _read_part(buf, start, len(buf), out)


@dataclass
class DetectionColumns:
    """The evaluation's columns of a vouched-for file, in file order (see ``_columns_kernel``)."""

    img: np.ndarray  # index of the image in the GT's sorted image ids
    cat: np.ndarray  # index of the category in the GT's sorted category ids
    score: np.ndarray
    area: np.ndarray  # lvis-api's: the box's w * h when the file has boxes, else the mask's
    mask_area: np.ndarray
    box: np.ndarray  # [n, 4] (zeros without boxes)
    rle_start: np.ndarray
    rle_end: np.ndarray

    def take(self, order: np.ndarray) -> DetectionColumns:
        return DetectionColumns(*(getattr(self, f)[order] for f in self.__dataclass_fields__))


def vouch(
    parsed: ParsedResults,
    gt_image_ids: np.ndarray,
    image_sizes: tuple[np.ndarray, np.ndarray],
    gt_cat_ids: np.ndarray,
) -> DetectionColumns | None:
    """The columns of ``parsed`` if ``results_io.validate_results`` would accept it for the GT: known
    image and category ids, finite scores, boxes of 4 finite numbers with no negative side, RLE sizes
    equal to the image's (the reader's kernel checked the json, the RLE strings and their runs); else
    None. ``gt_image_ids`` / ``gt_cat_ids``: the GT's ids, sorted; ``image_sizes``: (heights, widths)
    of those images."""
    from lvisctl.evaluation._columns_kernel import detection_columns, lookup_table
    from lvisctl.evaluation._parse_kernel import HAS_BBOX, HAS_SEGMENTATION

    n = parsed.num_dets
    cols = DetectionColumns(
        *(np.empty(n, np.int64) for _ in range(2)),
        *(np.empty(n, np.float64) for _ in range(2)),
        np.empty(n, np.int64),
        np.empty((n, 4), np.float64),
        *(np.empty(n, np.int64) for _ in range(2)),
    )
    flags = (HAS_BBOX if parsed.has_bbox else 0) | (HAS_SEGMENTATION if parsed.has_segmentation else 0)
    gt = (gt_image_ids, *image_sizes, gt_cat_ids, *lookup_table(gt_image_ids), *lookup_table(gt_cat_ids))
    out = (cols.img, cols.cat, cols.score, cols.area, cols.mask_area, cols.box, cols.rle_start, cols.rle_end)
    row = 0
    for ints, flt in parsed.chunks:
        if not detection_columns(ints, flt, row, flags, gt, out):
            return None
        row += len(ints)
    return cols


def reader_vouches(path: str | os.PathLike[str], table: ImageTable) -> bool:
    """Whether the strict reader vouches for the results file at ``path`` against ``table`` (False also
    where numba is missing: the exact route then checks the file)."""
    parsed = parse_results(path)
    if parsed is None:
        return False
    image_ids = np.array(sorted(table.sizes), np.int64)
    sizes = np.array([table.sizes[int(i)] for i in image_ids], np.int64).reshape(-1, 2)
    cat_ids = np.array(sorted(table.cat_ids), np.int64)
    return vouch(parsed, image_ids, (sizes[:, 0].copy(), sizes[:, 1].copy()), cat_ids) is not None
