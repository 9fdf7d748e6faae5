"""json scanning primitives of the compiled readers (``_parse_kernel`` for results, ``_gt_kernel`` for the
GT's boxes), and :func:`borrowed`, which spares them numba's atomic reference counting.

Strings, numbers and literals are checked as Python's json reads them; numbers are converted exactly
(Clinger's fast path: at most 2^53 as a decimal integer times a power of ten up to 10^22), the others
reported as needing their text for an exactly rounded conversion.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from lvisctl.evaluation.numba_cache import ensure_cache_dir

ensure_cache_dir()

_POW10 = np.array([10.0**k for k in range(23)])
_MAX_EXACT = 1 << 53
_TRUE = np.frombuffer(b"true", np.uint8)
_FALSE = np.frombuffer(b"false", np.uint8)
_NULL = np.frombuffer(b"null", np.uint8)


@intrinsic
def borrowed(typingctx, ary):
    """``ary`` without its reference-counted owner (a view that lives only while ``ary`` does).

    Numba counts references to an array with atomic operations wherever a function, inlined or not,
    takes it as an argument: about 25 per detection in ``parse_part`` (a fifth of its time, perf). With
    no owner the count is skipped (NRT returns at once on a null owner); ``parse_part``'s caller keeps
    the arrays alive for the whole call."""

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, value=args[0])
        out = context.make_array(signature.return_type)(context, builder)
        for name in ("parent", "nitems", "itemsize", "data", "shape", "strides"):
            setattr(out, name, getattr(src, name))
        out.meminfo = context.get_constant_null(types.MemInfoPointer(types.voidptr))
        return out._getvalue()

    return ary(ary), codegen


@njit(cache=True, nogil=True, inline="always")
def skip_ws(buf, i):
    n = len(buf)
    while i < n and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
        i += 1
    return i


MORE, CLOSED, NEITHER = 1, 0, -1  # after_item's states


@njit(cache=True, nogil=True, inline="always")
def after_item(buf, i, n, close):
    """After a list item or an object member ending before ``buf[i]``: (index of the next item, MORE) at a
    comma, (index after the bracket, CLOSED) at ``close`` (93 ``]``, 125 ``}``), else (i, NEITHER); white
    space skipped."""
    i = skip_ws(buf, i)
    if i < n and buf[i] == 44:
        return skip_ws(buf, i + 1), MORE
    if i < n and buf[i] == close:
        return i + 1, CLOSED
    return i, NEITHER


@njit(cache=True, nogil=True)
def key_is(buf, start, end, key):
    if end - start != len(key):
        return False
    for j in range(len(key)):
        if buf[start + j] != key[j]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def string_end(buf, i, n):
    """``buf[i]`` is the opening quote: index after the closing quote; -1 for a control character (json
    forbids them raw), a bad escape, the end of the buffer, or a byte above 127 (the exact route checks
    that it is UTF-8)."""
    i += 1
    while i < n:
        c = buf[i]
        if c == 34:
            return i + 1
        if c < 32 or c > 127:
            return -1
        if c == 92:
            if i + 1 >= n:
                return -1
            e = buf[i + 1]
            if e == 117:  # \uXXXX
                if i + 5 >= n:
                    return -1
                for k in range(i + 2, i + 6):
                    h = buf[k]
                    if not (48 <= h <= 57 or 65 <= h <= 70 or 97 <= h <= 102):
                        return -1
                i += 6
                continue
            if not (e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116):
                return -1
            i += 2
            continue
        i += 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def parse_number(buf, i, n):
    """A json number at ``buf[i]``: (value, index after, status) with status 1 exact, 2 exact conversion
    needs the text (too many digits or a large exponent), 0 not a json number."""
    neg = False
    if i < n and buf[i] == 45:
        neg = True
        i += 1
    if i >= n or not (48 <= buf[i] <= 57):
        return 0.0, i, 0
    m = np.int64(0)
    digits = 0  # significant digits kept in m (at most 18: no overflow)
    dropped = False  # a non-zero digit did not fit in m
    scale = 0
    if buf[i] == 48:
        i += 1
        if i < n and 48 <= buf[i] <= 57:
            return 0.0, i, 0  # leading zero
    else:
        while i < n and 48 <= buf[i] <= 57:
            if digits < 18:
                m = m * 10 + (buf[i] - 48)
                digits += 1
            else:
                scale += 1
                dropped = dropped or buf[i] != 48
            i += 1
    if i < n and buf[i] == 46:
        i += 1
        if i >= n or not (48 <= buf[i] <= 57):
            return 0.0, i, 0
        while i < n and 48 <= buf[i] <= 57:
            d = buf[i] - 48
            if m == 0 and d == 0:
                scale -= 1  # leading zeros of a fraction
            elif digits < 18:
                m = m * 10 + d
                digits += 1
                scale -= 1
            elif d != 0:
                dropped = True
            i += 1
    if i < n and (buf[i] == 101 or buf[i] == 69):
        i += 1
        eneg = False
        if i < n and (buf[i] == 43 or buf[i] == 45):
            eneg = buf[i] == 45
            i += 1
        if i >= n or not (48 <= buf[i] <= 57):
            return 0.0, i, 0
        e = 0
        while i < n and 48 <= buf[i] <= 57:
            if e < 100000:
                e = e * 10 + (buf[i] - 48)
            i += 1
        scale += -e if eneg else e
    if m == 0 and not dropped:
        return (-0.0 if neg else 0.0), i, 1
    if dropped or m > _MAX_EXACT or scale > 22 or scale < -22:
        return 0.0, i, 2
    v = float(m)
    v = v * _POW10[scale] if scale >= 0 else v / _POW10[-scale]
    return (-v if neg else v), i, 1


@njit(cache=True, nogil=True, inline="always")
def parse_id(buf, i, n):
    """A json integer id: (value, index after, ok)."""
    neg = False
    if i < n and buf[i] == 45:
        neg = True
        i += 1
    start = i
    v = np.int64(0)
    while i < n and 48 <= buf[i] <= 57:
        v = v * 10 + (buf[i] - 48)
        i += 1
    if i == start or i - start > 18 or (buf[start] == 48 and i - start > 1):
        return 0, i, False
    if i < n and (buf[i] == 46 or buf[i] == 101 or buf[i] == 69):
        return 0, i, False  # a float: the exact route decides
    return (-v if neg else v), i, True


@njit(cache=True, nogil=True)
def _word(buf, i, n, word):
    if i + len(word) > n:
        return -1
    for k in range(len(word)):
        if buf[i + k] != word[k]:
            return -1
    return i + len(word)


@njit(cache=True, nogil=True)
def _literal(buf, i, n):
    """Index after ``true`` / ``false`` / ``null`` at ``buf[i]``, or -1."""
    c = buf[i]
    if c == 116:
        return _word(buf, i, n, _TRUE)
    if c == 102:
        return _word(buf, i, n, _FALSE)
    if c == 110:
        return _word(buf, i, n, _NULL)
    return -1


@njit(cache=True, nogil=True)
def _other_value(buf, i, n):
    """Skip the value of a field the evaluator does not read (a string, number or literal), or -1."""
    c = buf[i]
    if c == 34:
        return string_end(buf, i, n)
    if c == 45 or 48 <= c <= 57:
        _, j, st = parse_number(buf, i, n)
        return j if st != 0 else -1
    return _literal(buf, i, n)
