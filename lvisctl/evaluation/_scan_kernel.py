"""The numba kernel of :mod:`lvisctl.evaluation.results_scan` (imported only when a file is screened).

A tiny json walker for the LVIS results layout (a list of flat objects whose ``segmentation`` is an object)
that decodes compressed RLE strings as pycocotools' ``rleFrString`` does. Functions return -1 when the
block ends before the value does (the caller carries the rest over) and -2 for layouts it does not vouch
for.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lvisctl.evaluation.numba_cache import ensure_cache_dir

# The flags live in results_scan, which must not import numba itself (this module is loaded lazily).
from lvisctl.evaluation.results_scan import (
    BAD_RLE,
    HAS_BBOX,
    HAS_SEGMENTATION,
    NO_IMAGE_ID,
    SEG_NOT_RLE,
    T_BAD_RLE,
    T_BBOX,
    T_CLOSED,
    T_DETS,
    T_H,
    T_IMG,
    T_KIND,
    T_SEGMENTATION,
    T_W,
    T_WITHOUT_IMAGE_ID,
)

ensure_cache_dir()  # a place for numba's cache even where site-packages and home are read-only

# Status codes.
OK = 0
DISTRUST = 1
# A single run longer than this is garbage (LVIS images have < 2^25 pixels); it also keeps sums exact.
MAX_RUN = 1 << 40


@njit(cache=True, nogil=True)
def skip_ws(buf, i):
    n = len(buf)
    while i < n and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
        i += 1
    return i


@njit(cache=True, nogil=True)
def key_is(buf, start, end, key):
    if end - start != len(key):
        return False
    for j in range(len(key)):
        if buf[start + j] != key[j]:
            return False
    return True


@njit(cache=True, nogil=True)
def skip_string(buf, i):
    """``buf[i]`` is the opening quote; index after the closing quote, -1 if the block ends first."""
    n = len(buf)
    i += 1
    while i < n:
        c = buf[i]
        if c == 92:  # backslash: skip the escaped character
            i += 2
            continue
        if c == 34:
            return i + 1
        i += 1
    return -1


_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)
_BACKSLASHES = np.uint64(0x5C5C5C5C5C5C5C5C)
_BELOW_ALPHABET = np.uint64(0x3030303030303030)  # 48 ('0') in every byte
_ABOVE_ALPHABET = np.uint64(0x1010101010101010)  # 127 - 111 ('o') in every byte


@njit(cache=True, nogil=True)
def check_counts(buf, i, words):
    """Skip a compressed RLE string at ``buf[i]`` (the opening quote), checking its characters only.

    For files whose RLEs hotcoco decodes itself (its mask areas vouch for the runs), this checks what
    hotcoco's decoder does not: characters outside ``'0'..'o'`` and a last character that says
    "continued". ``words``: ``buf`` as uint64 (8-aligned), so clean 8-byte runs are checked at once with
    the "has a byte less / more than n" bit tricks. Returns decode_counts' tuple (run total 0).
    """
    n = len(buf)
    i += 1
    last = np.int64(0)
    bad = False
    while i < n:
        if (i & 7) == 0 and (i >> 3) < len(words):
            w = words[i >> 3]
            below = (w - _BELOW_ALPHABET) & ~w & _HIGHS  # a byte < '0' (the closing quote included)
            above = ((w + _ABOVE_ALPHABET) | w) & _HIGHS  # a byte > 'o'
            b = w ^ _BACKSLASHES
            backslash = (b - _ONES) & ~b & _HIGHS
            if (below | above | backslash) == 0:
                last = np.int64(buf[i + 7])
                i += 8
                continue
        c = np.int64(buf[i])
        i += 1
        if c == 34:
            return i, 0, bad or (last != 0 and ((last - 48) & 0x20) != 0), 1
        if c == 92:  # a backslash is a legal RLE character, escaped as two in json
            if i >= n:
                return i, 0, bad, -1
            if buf[i] != 92:
                return i, 0, bad, -2
            i += 1
        elif c < 48 or c > 111:
            bad = True
        last = c
    return i, 0, bad, -1


@njit(cache=True, nogil=True)
def skip_value(buf, i):
    """Index after the json value at ``i``; -1 if the block ends first, -2 if it is malformed."""
    n = len(buf)
    if i >= n:
        return -1
    c = buf[i]
    if c == 34:
        return skip_string(buf, i)
    if c == 123 or c == 91:  # object / array: match brackets, skipping strings
        depth = 0
        while i < n:
            c = buf[i]
            if c == 34:
                i = skip_string(buf, i)
                if i < 0:
                    return -1
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    # number / true / false / null: up to the next delimiter
    start = i
    while i < n:
        c = buf[i]
        if c == 44 or c == 125 or c == 93 or c == 32 or c == 10 or c == 13 or c == 9:
            return i if i > start else -2
        i += 1
    return -1


@njit(cache=True, nogil=True)
def parse_int(buf, i):
    """(value, index after, ok); ok = 0 not an integer, -1 block ended."""
    n = len(buf)
    neg = False
    if i < n and buf[i] == 45:
        neg = True
        i += 1
    start = i
    v = 0
    while i < n and 48 <= buf[i] <= 57:
        v = v * 10 + (buf[i] - 48)
        i += 1
    if i >= n:
        return 0, i, -1
    if i == start or i - start > 18:
        return 0, i, 0
    c = buf[i]
    if c == 46 or c == 101 or c == 69:  # '.', 'e', 'E': a float
        return 0, i, 0
    return (-v if neg else v), i, 1


@njit(cache=True, nogil=True)
def skip_bad_counts(buf, i, total):
    """After a bad character: the rest of the string (escapes skipped) -> decode_counts' result."""
    n = len(buf)
    while i < n:
        c = buf[i]
        if c == 34:
            return i + 1, total, True, 1
        i += 2 if c == 92 else 1
    return i, total, True, -1


@njit(cache=True, nogil=True)
def decode_counts(buf, i):
    """Decode a compressed RLE string at ``buf[i]`` (the opening quote) as pycocotools does.

    Returns (index after the string, run total, bad, status) with status 1 ok, -1 block ended,
    -2 an escape other than a backslash (distrust). The hot loop of the scan: one pass, few branches.
    """
    n = len(buf)
    i += 1
    total = 0
    m = 0
    prev1 = 0  # cnts[m-1]
    prev2 = 0  # cnts[m-2]
    x = 0
    shift = 0
    while i < n:
        c = np.int64(buf[i])
        i += 1
        v = c - 48
        if v < 0 or v > 63:  # outside '0'..'o': the closing quote, or a bad character
            if c == 34:
                return i, total, shift != 0, 1  # shift != 0: the last number says "continued"
            return skip_bad_counts(buf, i, total)
        if c == 92:  # a backslash is a legal RLE character, escaped as two in json
            if i >= n:
                return i, total, False, -1
            if buf[i] != 92:
                return i, total, False, -2
            i += 1
        x |= (v & 0x1F) << shift
        shift += 5
        if v & 0x20:  # continued
            if shift > 55:  # more than 60 bits: garbage, not a count
                return skip_bad_counts(buf, i, total)
            continue
        if v & 0x10:
            x |= np.int64(-1) << shift
        if m > 2:
            x += prev2
        if x < 0 or x > MAX_RUN:
            return skip_bad_counts(buf, i, total)
        total += x
        prev2 = prev1
        prev1 = x
        m += 1
        x = 0
        shift = 0
    return i, total, False, -1


@njit(cache=True, nogil=True)
def minus_in_size(buf, start, end):
    """A '-' in the third or fourth number of a bbox ``[x, y, w, h]``: a negative width or height (or an
    exponent); hotcoco's area ``w * h`` cannot vouch for two negative sides."""
    commas = 0
    for k in range(start, end):
        c = buf[k]
        if c == 44:
            commas += 1
        elif c == 45 and commas >= 2:
            return True
    return False


@njit(cache=True, nogil=True)
def parse_segmentation(buf, i, key_size, key_counts, decode, words):
    """(index after, h, w, run total, flags, status) for the value at ``buf[i]``."""
    h = -1
    w = -1
    total = -1
    flags = 0
    if buf[i] != 123:  # polygons or anything else: not compressed RLE
        j = skip_value(buf, i)
        return j, h, w, total, SEG_NOT_RLE, (1 if j >= 0 else j)
    i += 1
    n = len(buf)
    have_counts = False
    while True:
        i = skip_ws(buf, i)
        if i >= n:
            return i, h, w, total, flags, -1
        if buf[i] == 125:
            i += 1
            break
        if buf[i] == 44:
            i += 1
            continue
        if buf[i] != 34:
            return i, h, w, total, flags, -2
        kstart = i + 1
        j = skip_string(buf, i)
        if j < 0:
            return i, h, w, total, flags, -1
        kend = j - 1
        i = skip_ws(buf, j)
        if i >= n:
            return i, h, w, total, flags, -1
        if buf[i] != 58:
            return i, h, w, total, flags, -2
        i = skip_ws(buf, i + 1)
        if i >= n:
            return i, h, w, total, flags, -1
        if key_is(buf, kstart, kend, key_counts):
            if buf[i] != 34:
                flags |= SEG_NOT_RLE
                i = skip_value(buf, i)
                if i < 0:
                    return 0, h, w, total, flags, i
                continue
            if decode:
                i, t, bad, st = decode_counts(buf, i)
            else:  # hotcoco decodes this file's RLEs itself (for mask areas) and the caller checks that
                i, t, bad, st = check_counts(buf, i, words)
            if st != 1:
                return i, h, w, total, flags, st
            have_counts = True
            total = t
            if bad:
                flags |= BAD_RLE
        elif key_is(buf, kstart, kend, key_size):
            ok = False
            if buf[i] == 91:
                a, i2, st1 = parse_int(buf, skip_ws(buf, i + 1))
                if st1 == -1:
                    return i2, h, w, total, flags, -1
                i2 = skip_ws(buf, i2)
                if st1 == 1 and i2 < n and buf[i2] == 44:
                    b, i3, st2 = parse_int(buf, skip_ws(buf, i2 + 1))
                    if st2 == -1:
                        return i3, h, w, total, flags, -1
                    i3 = skip_ws(buf, i3)
                    if st2 == 1 and i3 < n and buf[i3] == 93:
                        h = a
                        w = b
                        i = i3 + 1
                        ok = True
            if not ok:
                flags |= SEG_NOT_RLE
                i = skip_value(buf, i)
                if i < 0:
                    return 0, h, w, total, flags, i
        else:
            i = skip_value(buf, i)
            if i < 0:
                return 0, h, w, total, flags, i
    if not have_counts or h < 0:
        flags |= SEG_NOT_RLE
    elif decode and total != h * w:  # runs must cover the mask exactly (pycocotools leaves the rest unset)
        flags |= BAD_RLE
    return i, h, w, total, flags, 1


@njit(cache=True, nogil=True)
def scan_block(buf, start, first, ids, hs, ws, kinds, totals, keys, decode):
    """Scan the complete detections in ``buf[start:]`` (``buf`` starts 8-byte aligned).

    ``first``: the block starts the file (expects ``[``). Per detection, ``totals`` (carried from block to
    block, see ``results_scan.T_*``) counts it and its flags; a row (image id, RLE h, w, kind flags) is
    written to ``ids, hs, ws, kinds`` only when it differs from the last row written, so an image's
    detections, listed together, give about one row. Returns (rows written, index in ``buf`` after the
    last complete detection, status). Stops before a detection the block cuts off, or when the rows are
    full; the caller starts the next block there.
    """
    key_image_id, key_bbox, key_seg, key_size, key_counts, key_score = keys
    n = len(buf)
    words = buf[: n - n % 8].view(np.uint64)
    i = start
    count = 0
    consumed = start
    closed = totals[T_CLOSED] != 0
    if first:
        i = skip_ws(buf, start)
        if i >= n:
            return 0, start, OK
        if buf[i] != 91:
            return 0, 0, DISTRUST
        i += 1
        consumed = i
    while True:
        i = skip_ws(buf, i)
        if i >= n:
            return count, consumed, OK
        c = buf[i]
        if closed:
            return count, consumed, DISTRUST  # bytes after the closing bracket
        if c == 44:
            i += 1
            continue
        if c == 93:
            closed = True
            totals[T_CLOSED] = 1
            i += 1
            consumed = i
            continue
        if c != 123:
            return count, consumed, DISTRUST
        # One detection object.
        i += 1
        img = 0
        fl = NO_IMAGE_ID
        h = -1
        w = -1
        has_score = False
        incomplete = False
        while True:
            i = skip_ws(buf, i)
            if i >= n:
                incomplete = True
                break
            if buf[i] == 125:
                i += 1
                break
            if buf[i] == 44:
                i += 1
                continue
            if buf[i] != 34:
                return count, consumed, DISTRUST
            kstart = i + 1
            j = skip_string(buf, i)
            if j < 0:
                incomplete = True
                break
            kend = j - 1
            i = skip_ws(buf, j)
            if i >= n:
                incomplete = True
                break
            if buf[i] != 58:
                return count, consumed, DISTRUST
            i = skip_ws(buf, i + 1)
            if i >= n:
                incomplete = True
                break
            if key_is(buf, kstart, kend, key_image_id):
                v, i, st = parse_int(buf, i)
                if st == -1:
                    incomplete = True
                    break
                if st == 0:
                    return count, consumed, DISTRUST
                img = v
                fl &= ~NO_IMAGE_ID
            elif key_is(buf, kstart, kend, key_seg):
                fl |= HAS_SEGMENTATION
                i, h, w, _, sfl, st = parse_segmentation(buf, i, key_size, key_counts, decode, words)
                if st == -1:
                    incomplete = True
                    break
                if st == -2:
                    return count, consumed, DISTRUST
                fl |= sfl
            else:
                is_bbox = key_is(buf, kstart, kend, key_bbox)
                if is_bbox:
                    fl |= HAS_BBOX
                elif key_is(buf, kstart, kend, key_score):
                    has_score = True
                vstart = i
                i = skip_value(buf, i)
                if i == -1:
                    incomplete = True
                    break
                if i == -2:
                    return count, consumed, DISTRUST
                if is_bbox and minus_in_size(buf, vstart, i):
                    return count, consumed, DISTRUST  # maybe a negative w / h: the exact check decides
        if incomplete:
            return count, consumed, OK
        if not has_score:  # hotcoco takes a detection without a score: the exact check names it
            return count, consumed, DISTRUST
        kind = fl & (HAS_SEGMENTATION | SEG_NOT_RLE | NO_IMAGE_ID)
        if kind != totals[T_KIND] or img != totals[T_IMG] or h != totals[T_H] or w != totals[T_W]:
            if count >= len(ids):
                return count, consumed, OK  # rows full: the caller takes them and goes on
            ids[count] = img
            hs[count] = h
            ws[count] = w
            kinds[count] = kind
            count += 1
            totals[T_IMG] = img
            totals[T_H] = h
            totals[T_W] = w
            totals[T_KIND] = kind
        totals[T_DETS] += 1
        if fl & HAS_BBOX:
            totals[T_BBOX] += 1
        if fl & HAS_SEGMENTATION:
            totals[T_SEGMENTATION] += 1
        if fl & (BAD_RLE | SEG_NOT_RLE):
            totals[T_BAD_RLE] += 1
        if fl & NO_IMAGE_ID:
            totals[T_WITHOUT_IMAGE_ID] += 1
        consumed = i


@njit(cache=True, nogil=True)
def rle_run_totals(buf, starts):
    """Run totals of the quoted RLE strings starting at ``starts`` in ``buf`` (-1: does not decode)."""
    out = np.empty(len(starts), np.int64)
    for j in range(len(starts)):
        _, total, bad, st = decode_counts(buf, starts[j])
        out[j] = total if (st == 1 and not bad) else -1
    return out
