"""The numba kernel of :mod:`lvisctl.evaluation.results_parse`: a strict, one-pass reader of a results file.

Reads the usual LVIS results layout (a json list of flat objects with ``image_id``, ``category_id``,
``score``, ``bbox`` and a compressed-RLE ``segmentation``) into columns, decoding each RLE as pycocotools'
``rleFrString`` does, and vouches only for what Python's json and ``results_io.validate_results`` would
accept: strict json grammar (commas, numbers, literals, no control characters in strings), integer ids,
a 4-number box, RLE strings of ``'0'..'o'`` whose runs cover exactly ``h * w``, no repeated field.
Anything else makes it return ``DISTRUST``; the caller then takes the exact route (parse in Python, name
the problem). Numbers are converted exactly (``_json_kernel.parse_number``); the others are handed back as
text for an exactly rounded conversion.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

from lvisctl.evaluation._json_kernel import (
    CLOSED,
    MORE,
    _other_value,
    after_item,
    borrowed,
    parse_id,
    parse_number,
    skip_ws,
    string_end,
)
from lvisctl.evaluation.numba_cache import ensure_cache_dir

ensure_cache_dir()  # a place for numba's cache even where site-packages and home are read-only

# A single run longer than this is garbage (LVIS images have < 2^25 pixels); it also keeps sums exact.
MAX_RUN = 1 << 40

# Return status of parse_part.
DONE = 0  # the part was read up to ``stop`` (or the list's end)
FULL = 1  # an output is full: take the rows and call again from the returned position
DISTRUST = 2

# Integer columns.
C_IMG, C_CAT, C_RLE_START, C_RLE_END, C_H, C_W, C_MASK_AREA, C_FLAGS = range(8)
N_INT_COLS = 8
# Float columns.
F_SCORE, F_X, F_Y, F_W, F_H = range(5)
N_FLOAT_COLS = 5
# Flags.
HAS_BBOX = 1
HAS_SEGMENTATION = 2
_SEEN_IMG = 4
_SEEN_CAT = 8
_SEEN_SCORE = 16

FIX_TEXT = 32  # the longest number handed back as text

# decode_rle's eight-characters-at-once path (little-endian words: byte k is bits 8k..8k+7)
_LITTLE_ENDIAN = sys.byteorder == "little"
_HIGH = np.uint64(0x8080808080808080)
_ADD_80 = np.uint64(0x5050505050505050)  # 48..79 + 0x50 = 0x80..0x9F: top three bits 100
_TOP3 = np.uint64(0xE0E0E0E0E0E0E0E0)


# Rows of the key table ``parse_part`` takes (see ``key_table``): row k is [length, bytes...].
K_IMAGE_ID, K_CATEGORY_ID, K_SCORE, K_BBOX, K_SEGMENTATION, K_SIZE, K_COUNTS = range(7)
_KEY_NAMES = (b"image_id", b"category_id", b"score", b"bbox", b"segmentation", b"size", b"counts")


def key_table() -> np.ndarray:
    """The keys ``parse_part`` looks for, one row each: [length, bytes...]. One array, not a tuple of
    arrays: unpacking that tuple per detection cost two atomic reference-count operations per key."""
    table = np.zeros((len(_KEY_NAMES), 1 + max(len(k) for k in _KEY_NAMES)), np.uint8)
    for k, name in enumerate(_KEY_NAMES):
        table[k, 0] = len(name)
        table[k, 1 : 1 + len(name)] = np.frombuffer(name, np.uint8)
    return table


@njit(cache=True, nogil=True, inline="always")
def key_at(buf, start, end, keys, k):
    """Whether ``buf[start:end]`` is row ``k`` of the key table ``keys``."""
    if end - start != keys[k, 0]:
        return False
    for j in range(end - start):
        if buf[start + j] != keys[k, 1 + j]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def decode_rle(buf, i, n):
    """The compressed RLE string at ``buf[i]`` (the opening quote): (index after, run total, foreground
    area, ok); not ok for characters outside ``'0'..'o'``, escapes other than a backslash, a negative or
    huge run, or a last number that says "continued".

    Most numbers of a real mask's string are one character (a small difference to the count two places
    back, 95% at LVIS-val scale): eight such characters at an 8-byte boundary are read as one word and
    summed without a branch per character (a third less time than byte by byte; the same totals, see
    ``tests/unit/test_eval_results_parse.py``)."""
    words = buf[: len(buf) // 8 * 8].view(np.uint64)
    i += 1
    total = np.int64(0)
    area = np.int64(0)
    m = 0
    prev1 = np.int64(0)
    prev2 = np.int64(0)
    x = np.int64(0)
    shift = 0
    while i < n:
        if _LITTLE_ENDIAN and (i & 7) == 0 and shift == 0 and m > 2 and (i >> 3) < len(words):
            w = words[i >> 3]
            y = w + _ADD_80
            # zero where every byte is '0'..'O' (48..79, no continuation bit): it is then 0x80 | (c - 48)
            if ((y & _TOP3) ^ _HIGH) | (w & _HIGH) == 0:
                bad = False
                for j in range(8):
                    v = np.int64((y >> np.uint64(8 * j)) & np.uint64(0x1F))
                    x = (v & 0xF) - (v & 0x10) + prev2  # a 5-bit signed difference
                    bad |= x < 0 or x > MAX_RUN
                    total += x
                    area += x & -((m + j) & 1)
                    prev2 = prev1
                    prev1 = x
                if bad:
                    return i, total, area, False
                m += 8
                i += 8
                x = 0
                continue
        c = np.int64(buf[i])
        i += 1
        v = c - 48
        if v < 0 or v > 63:
            if c == 34 and shift == 0:
                return i, total, area, True
            return i, total, area, False
        if c == 92:
            if i >= n or buf[i] != 92:
                return i, total, area, False
            i += 1
        x |= (v & 0x1F) << shift
        shift += 5
        if v & 0x20:
            if shift > 55:
                return i, total, area, False
            continue
        if v & 0x10:
            x |= np.int64(-1) << shift
        if m > 2:
            x += prev2
        if x < 0 or x > MAX_RUN:
            return i, total, area, False
        total += x
        if m & 1:
            area += x
        prev2 = prev1
        prev1 = x
        m += 1
        x = 0
        shift = 0
    return i, total, area, False


@njit(cache=True, nogil=True, inline="always")
def _number_field(buf, i, n, flt, row, col, fix_idx, fix_txt, nfix):
    """Read a number into ``flt[row, col]``; text for an exact conversion goes to the fix-up table.
    Returns (index after, fix-ups used, ok)."""
    v, j, st = parse_number(buf, i, n)
    if st == 0:
        return j, nfix, False
    flt[row, col] = v
    if st == 2:
        if nfix >= len(fix_idx) or j - i > FIX_TEXT:
            return j, nfix, False
        fix_idx[nfix, 0] = row
        fix_idx[nfix, 1] = col
        for k in range(j - i):
            fix_txt[nfix, k] = buf[i + k]
        for k in range(j - i, FIX_TEXT):
            fix_txt[nfix, k] = 0
        nfix += 1
    return j, nfix, True


@njit(cache=True, nogil=True, inline="always")
def _segmentation(buf, i, n, ints, row, keys):
    """The ``{"size": [h, w], "counts": "..."}`` object at ``buf[i]``: index after, or -1."""
    if buf[i] != 123:
        return -1
    i = skip_ws(buf, i + 1)
    seen = 0
    h = w = -1
    total = np.int64(-1)
    while i < n:
        if buf[i] == 125 and seen == 0:
            return -1
        if buf[i] != 34:
            return -1
        ks = i + 1
        j = string_end(buf, i, n)
        if j < 0:
            return -1
        ke = j - 1
        i = skip_ws(buf, j)
        if i >= n or buf[i] != 58:
            return -1
        i = skip_ws(buf, i + 1)
        if i >= n:
            return -1
        if key_at(buf, ks, ke, keys, K_COUNTS) and not seen & 1:
            seen |= 1
            if buf[i] != 34:
                return -1
            ints[row, C_RLE_START] = i + 1
            i, total, area, ok = decode_rle(buf, i, n)
            if not ok:
                return -1
            ints[row, C_RLE_END] = i - 1
            ints[row, C_MASK_AREA] = area
        elif key_at(buf, ks, ke, keys, K_SIZE) and not seen & 2:
            seen |= 2
            if buf[i] != 91:
                return -1
            h, i, ok1 = parse_id(buf, skip_ws(buf, i + 1), n)
            i = skip_ws(buf, i)
            if not ok1 or i >= n or buf[i] != 44:
                return -1
            w, i, ok2 = parse_id(buf, skip_ws(buf, i + 1), n)
            i = skip_ws(buf, i)
            if not ok2 or i >= n or buf[i] != 93 or h < 0 or w < 0:
                return -1
            i += 1
        else:
            return -1  # another key in a segmentation: the exact route decides
        i = skip_ws(buf, i)
        if i < n and buf[i] == 44:
            i = skip_ws(buf, i + 1)
            continue
        if i < n and buf[i] == 125 and seen == 3:
            if total != h * w:  # runs must cover the mask exactly (pycocotools leaves the rest unset)
                return -1
            ints[row, C_H] = h
            ints[row, C_W] = w
            return i + 1
        return -1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _detection(buf, i, n, ints, flt, row, fix_idx, fix_txt, nfix, keys):
    """One detection object at ``buf[i]`` (``{``): (index after, fix-ups used, ok)."""
    fl = 0
    i = skip_ws(buf, i + 1)
    for c in range(N_INT_COLS):
        ints[row, c] = 0
    while i < n:
        if buf[i] != 34:
            return i, nfix, False
        ks = i + 1
        j = string_end(buf, i, n)
        if j < 0:
            return i, nfix, False
        ke = j - 1
        i = skip_ws(buf, j)
        if i >= n or buf[i] != 58:
            return i, nfix, False
        i = skip_ws(buf, i + 1)
        if i >= n:
            return i, nfix, False
        if key_at(buf, ks, ke, keys, K_IMAGE_ID) and not fl & _SEEN_IMG:
            fl |= _SEEN_IMG
            v, i, ok = parse_id(buf, i, n)
            ints[row, C_IMG] = v
        elif key_at(buf, ks, ke, keys, K_CATEGORY_ID) and not fl & _SEEN_CAT:
            fl |= _SEEN_CAT
            v, i, ok = parse_id(buf, i, n)
            ints[row, C_CAT] = v
        elif key_at(buf, ks, ke, keys, K_SCORE) and not fl & _SEEN_SCORE:
            fl |= _SEEN_SCORE
            i, nfix, ok = _number_field(buf, i, n, flt, row, F_SCORE, fix_idx, fix_txt, nfix)
        elif key_at(buf, ks, ke, keys, K_BBOX) and not fl & HAS_BBOX:
            fl |= HAS_BBOX
            ok = buf[i] == 91
            i = skip_ws(buf, i + 1)
            for col in range(F_X, F_H + 1):
                if not ok:
                    break
                i, nfix, ok = _number_field(buf, i, n, flt, row, col, fix_idx, fix_txt, nfix)
                i = skip_ws(buf, i)
                ok = ok and i < n and buf[i] == (93 if col == F_H else 44)
                i = skip_ws(buf, i + 1) if col < F_H else i + 1
        elif key_at(buf, ks, ke, keys, K_SEGMENTATION) and not fl & HAS_SEGMENTATION:
            fl |= HAS_SEGMENTATION
            i = _segmentation(buf, i, n, ints, row, keys)
            ok = i >= 0
        elif (
            key_at(buf, ks, ke, keys, K_IMAGE_ID)
            or key_at(buf, ks, ke, keys, K_CATEGORY_ID)
            or key_at(buf, ks, ke, keys, K_SCORE)
            or key_at(buf, ks, ke, keys, K_BBOX)
            or key_at(buf, ks, ke, keys, K_SEGMENTATION)
        ):
            ok = False  # a repeated field: json keeps the last, hotcoco may not; the exact route decides
        else:
            i = _other_value(buf, i, n)
            ok = i >= 0
        if not ok:
            return max(i, 0), nfix, False
        i = skip_ws(buf, i)
        if i < n and buf[i] == 44:
            i = skip_ws(buf, i + 1)
            continue
        if i < n and buf[i] == 125:
            need = _SEEN_IMG | _SEEN_CAT | _SEEN_SCORE
            ints[row, C_FLAGS] = fl & (HAS_BBOX | HAS_SEGMENTATION)
            return i + 1, nfix, (fl & need) == need
        return i, nfix, False
    return i, nfix, False


@njit(cache=True, nogil=True)
def parse_part(buf, pos, stop, first, ints, flt, fix_idx, fix_txt, keys):  # pragma: no cover - compiled
    """Read the detections that start in ``[pos, stop)``; ``first``: ``pos`` is the file's start (``[``),
    else ``pos`` is a detection's ``{``.

    Returns (rows, fix-ups, position, status, closed): DONE with the position of the first detection at or
    after ``stop`` (or the end of the file once the list closed), FULL with the position to resume from,
    or DISTRUST. ``closed``: the list's ``]`` was read and only whitespace follows it.
    """
    buf, ints, flt = borrowed(buf), borrowed(ints), borrowed(flt)
    fix_idx, fix_txt, keys = borrowed(fix_idx), borrowed(fix_txt), borrowed(keys)
    n = len(buf)
    rows = 0
    nfix = 0
    i = pos
    if first:
        i = skip_ws(buf, i)
        if i >= n or buf[i] != 91:
            return 0, 0, i, DISTRUST, False
        i = skip_ws(buf, i + 1)
        if i < n and buf[i] == 93:
            return 0, 0, i, DISTRUST, False  # an empty list: the exact route
    while True:
        if i >= stop:
            return rows, nfix, i, DONE, False
        if i >= n or buf[i] != 123:
            return rows, nfix, i, DISTRUST, False
        if rows >= len(ints) or nfix + 5 > len(fix_idx):
            return rows, nfix, i, FULL, False
        j, nfix2, ok = _detection(buf, i, n, ints, flt, rows, fix_idx, fix_txt, nfix, keys)
        if not ok:
            return rows, nfix, i, DISTRUST, False
        nfix = nfix2
        rows += 1
        i, state = after_item(buf, j, n, 93)
        if state == MORE:
            continue
        if state == CLOSED:
            i = skip_ws(buf, i)
            return rows, nfix, i, (DONE if i >= n else DISTRUST), i >= n
        return rows, nfix, i, DISTRUST, False


@njit(cache=True, nogil=True)
def rle_run_totals(buf, starts):  # pragma: no cover - compiled
    """Run totals of the quoted RLE strings starting at ``starts`` in ``buf`` (-1: does not decode)."""
    out = np.empty(len(starts), np.int64)
    for j in range(len(starts)):
        _, total, _, ok = decode_rle(buf, starts[j], len(buf))
        out[j] = total if ok else -1
    return out
