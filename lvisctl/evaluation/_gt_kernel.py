"""numba kernel that reads the GT annotations' box-evaluation fields straight from the annotation file.

A box evaluation needs of each GT annotation only its image, category, area, box and ``ignore``; taking
them from hotcoco's dataset built a Python dict per annotation and a list per polygon (0.4 CPU s at
5,000 images, 1.6 s at LVIS-val size: more than the evaluation of the boxes). hotcoco has already parsed
the file strictly, so this reader only walks it: the top-level ``annotations`` list, and in each
annotation those five fields (the polygons and anything else skipped by bracket matching). It refuses
(returns a negative count) anything it would have to interpret differently from hotcoco's dataset: a
missing or repeated field, a non-integer id or ``ignore``, a box that is not 4 numbers, a number whose
exact conversion needs its text; the caller then takes the Python route.
"""

from __future__ import annotations

from numba import njit

from lvisctl.evaluation._json_kernel import (
    CLOSED,
    MORE,
    _other_value,
    after_item,
    key_is,
    parse_id,
    parse_number,
    skip_ws,
)
from lvisctl.evaluation.numba_cache import ensure_cache_dir

ensure_cache_dir()

REFUSED = -1
FULL = -2

# The fields read, in the order of read_annotations' ``fields``: the first three are integer columns of
# ``ints`` (their field index is the column), area and box are ``flt``'s columns 0 and 1-4.
_F_IGNORE, _F_AREA = 2, 3
_REQUIRED = 0b11011  # image_id, category_id, area, bbox (``ignore`` is optional)


@njit(cache=True, nogil=True)
def _string(buf, i, n):  # pragma: no cover - compiled
    """Index after the json string whose opening quote is ``buf[i]`` (any bytes: hotcoco checked them)."""
    i += 1
    while i < n:
        if buf[i] == 34:
            return i + 1
        i += 2 if buf[i] == 92 else 1  # an escape's next byte is never the closing quote
    return -1


@njit(cache=True, nogil=True)
def skip_value(buf, i, n):  # pragma: no cover - compiled
    """Index after the json value at ``buf[i]`` (a file hotcoco parsed: brackets match outside strings),
    or -1."""
    c = buf[i]
    if c == 34:
        return _string(buf, i, n)
    if c != 91 and c != 123:
        return _other_value(buf, i, n)
    depth = 0
    while i < n:
        c = buf[i]
        if c == 34:
            i = _string(buf, i, n)
            if i < 0:
                return -1
            continue
        if c == 91 or c == 123:
            depth += 1
        elif c == 93 or c == 125:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


@njit(cache=True, nogil=True)
def _key(buf, i, n):  # pragma: no cover - compiled
    """(key start, key end, index of its value) of the ``"key": value`` at ``buf[i]``; -1s if not one."""
    if i >= n or buf[i] != 34:
        return -1, -1, -1
    j = _string(buf, i, n)
    if j < 0:
        return -1, -1, -1
    v = skip_ws(buf, j)
    if v >= n or buf[v] != 58:
        return -1, -1, -1
    v = skip_ws(buf, v + 1)
    return (i + 1, j - 1, v) if v < n else (-1, -1, -1)


@njit(cache=True, nogil=True)
def _number(buf, i, n):
    """(value, index after, ok) of a json number that converts exactly without its text."""
    v, j, st = parse_number(buf, i, n)
    return v, j, st == 1


@njit(cache=True, nogil=True)
def _field(buf, ks, ke, fields):  # pragma: no cover - compiled
    """Index in ``fields`` of the key ``buf[ks:ke]``, or -1."""
    for f in range(len(fields)):
        if key_is(buf, ks, ke, fields[f]):
            return f
    return -1


@njit(cache=True, nogil=True)
def _box(buf, i, n, flt, row):  # pragma: no cover - compiled
    """The ``[x, y, w, h]`` at ``buf[i]`` into ``flt[row, 1:5]``: (index after, ok)."""
    ok = buf[i] == 91
    i = skip_ws(buf, i + 1)
    for col in range(1, 5):
        if not ok:
            break
        x, i, ok = _number(buf, i, n)
        flt[row, col] = x
        i = skip_ws(buf, i)
        ok = ok and i < n and buf[i] == (93 if col == 4 else 44)
        i = skip_ws(buf, i + 1) if col < 4 else i + 1
    return i, ok


@njit(cache=True, nogil=True)
def _annotation(buf, i, n, fields, row, ints, flt):  # pragma: no cover - compiled
    """One annotation object at ``buf[i]``: index after, or -1 (refused)."""
    seen = 0
    ints[row, _F_IGNORE] = 0  # ignore, when absent
    i = skip_ws(buf, i + 1)
    if i < n and buf[i] == 125:
        return -1
    while i < n:
        ks, ke, i = _key(buf, i, n)
        if i < 0:
            return -1
        f = _field(buf, ks, ke, fields)
        if f < 0:
            i = skip_value(buf, i, n)
            ok = i >= 0
        elif f < _F_AREA:
            ints[row, f], i, ok = parse_id(buf, i, n)
        elif f == _F_AREA:
            flt[row, 0], i, ok = _number(buf, i, n)
        else:
            i, ok = _box(buf, i, n, flt, row)
        bit = 1 << f if f >= 0 else 0
        if not ok or seen & bit:
            return -1
        seen |= bit
        i, state = after_item(buf, i, n, 125)
        if state == MORE:
            continue
        if state == CLOSED:
            return i if seen & _REQUIRED == _REQUIRED else -1
        return -1
    return -1


@njit(cache=True, nogil=True)
def read_annotations(buf, keys, ints, flt):  # pragma: no cover - compiled
    """The annotations of the LVIS json in ``buf``: fills ``ints`` [image id, category id, ignore] and
    ``flt`` [area, x, y, w, h] row by row, in file order. ``keys``: (b"annotations", b"image_id",
    b"category_id", b"area", b"bbox", b"ignore") as uint8 arrays. Returns the number of annotations, FULL
    when the outputs are too small, or REFUSED."""
    k_annotations = keys[0]
    fields = (keys[1], keys[2], keys[5], keys[3], keys[4])  # image_id, category_id, ignore, area, bbox
    n = len(buf)
    i = skip_ws(buf, 0)
    if i >= n or buf[i] != 123:
        return REFUSED
    i = skip_ws(buf, i + 1)
    rows = -1
    while i < n and buf[i] == 34:
        ks, ke, i = _key(buf, i, n)
        if i < 0:
            return REFUSED
        if key_is(buf, ks, ke, k_annotations):
            if rows >= 0 or buf[i] != 91:
                return REFUSED  # repeated (json keeps the last one; let hotcoco's dataset decide)
            rows = 0
            i = skip_ws(buf, i + 1)
            if i < n and buf[i] == 93:
                i += 1
            else:
                while True:
                    if i >= n or buf[i] != 123:
                        return REFUSED
                    if rows >= len(ints):
                        return FULL
                    i = _annotation(buf, i, n, fields, rows, ints, flt)
                    if i < 0:
                        return REFUSED
                    rows += 1
                    i, state = after_item(buf, i, n, 93)
                    if state == MORE:
                        continue
                    if state == CLOSED:
                        break
                    return REFUSED
        else:
            i = skip_value(buf, i, n)
            if i < 0:
                return REFUSED
        i = skip_ws(buf, i)
        if i < n and buf[i] == 44:
            i = skip_ws(buf, i + 1)
            continue
        break
    return rows if rows >= 0 else REFUSED
