"""The strict compiled reader of results files (``results_parse``, ported from the screen's tests): RLE
decoding by hand, what it refuses to vouch for, the columns it yields, the sha256 it computes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lvisctl.evaluation import _parse_kernel as K
from lvisctl.evaluation.results_io import ImageTable
from lvisctl.evaluation.results_parse import parse_results, reader_vouches
from tests.helpers.lvis_reference import det_rect

pytest.importorskip("numba")  # a dependency; without it evaluate falls back to hotcoco + Python validator

# Hand-encoded compressed RLEs (each checked against pycocotools' encoder):
#   "0532" = runs 0, 5, 3, 7: the 4th count is stored as 7 - 5 = 2 (differences to two places back)
#            -> 15 pixels: exactly a 3x5 image, 5 too many for 2x5.
#   "T3"   = one run of 100: 'T' = 84 -> 36 = 0x20 | 4 (continued, low bits 4), '3' -> 3: 4 + 3 * 32.
#   ":5:M" = runs 10, 5, 10, 2: 'M' -> 29 = 0x10 | 13, sign bit set: 29 - 32 = -3, and 5 - 3 = 2.
SIZES = {1: (3, 5), 2: (10, 10), 3: (3, 9), 4: (2, 5)}
TABLE = ImageTable(sizes=SIZES, cat_ids=frozenset({1, 2}), path="gt.json")


def det(image_id: int, counts: str, size=None, **extra) -> dict:
    h, w = size or SIZES[image_id]
    return {
        "image_id": image_id,
        "category_id": 1,
        "score": 0.5,
        "segmentation": {"size": [h, w], "counts": counts},
        **extra,
    }


def parse_of(tmp_path, dets, text=None, **kw):
    path = tmp_path / "r.json"
    path.write_text(text if text is not None else json.dumps(dets), encoding="utf-8")
    return parse_results(path, **kw)


def vouched(tmp_path, dets, text=None) -> bool:
    path = tmp_path / "r.json"
    path.write_text(text if text is not None else json.dumps(dets), encoding="utf-8")
    return reader_vouches(path, TABLE)


def test_hand_encoded_rles_are_valid_and_runs_are_totalled(tmp_path):
    p = parse_of(tmp_path, [det(1, "0532"), det(2, "T3"), det(3, ":5:M")])
    assert p.num_dets == 3 and p.has_segmentation and not p.has_bbox
    assert p.ints[:, K.C_MASK_AREA].tolist() == [12, 0, 7]  # foreground: the odd runs
    assert p.ints[:, [K.C_IMG, K.C_H, K.C_W]].tolist() == [[1, 3, 5], [2, 10, 10], [3, 3, 9]]
    assert vouched(tmp_path, [det(1, "0532"), det(2, "T3"), det(3, ":5:M")])


@pytest.mark.parametrize(
    "counts",
    [
        "0532",  # 15 runs' worth of pixels in a 2x5 image
        "0P",  # truncated: 'P' -> 32 says "continued"
        "0~",  # '~' is outside '0'..'o'
        "05M",  # the third count is stored as is: 'M' -> -3, a negative run
        "11",  # runs short of h*w (issue 22 item 16)
    ],
)
def test_bad_rles_are_not_vouched_for(tmp_path, counts):
    assert parse_of(tmp_path, [det(4, counts), det(1, "0532")]) is None


def test_escaped_backslash_is_an_rle_character(tmp_path):
    # '\\' (92) -> 44 = 0x20 | 12: continued; then '0' ends the number: 12 -> one run of 12 = 3x4.
    p = parse_of(tmp_path, [det(1, "\\0", size=(3, 4))])
    assert p is not None and p.ints[0, K.C_H] == 3
    assert not vouched(tmp_path, [det(1, "\\0", size=(3, 4))])  # 3x4 is not image 1's size


def test_fields_and_ids(tmp_path):
    ok = [det(1, "0532", bbox=[0, 0, 1, 1]), det(2, "T3", bbox=[1, 2, 3, 4.5])]
    p = parse_of(tmp_path, ok)
    assert p.has_bbox and p.flt[:, K.F_X : K.F_H + 1].tolist() == [[0, 0, 1, 1], [1, 2, 3, 4.5]]
    assert vouched(tmp_path, ok)
    assert parse_of(tmp_path, [ok[0], det(2, "T3")]) is None  # bbox on some only
    assert not vouched(tmp_path, [dict(det(1, "0532"), image_id=9)])  # unknown image id
    assert not vouched(tmp_path, [dict(det(1, "0532"), category_id=7)])  # unknown category id
    assert not vouched(tmp_path, [det(1, "0532", bbox=[0, 0, -1, -1])])  # negative sides
    assert (
        parse_of(tmp_path, [{"category_id": 1, "score": 0.1, "segmentation": [[0, 0, 1, 1, 1, 0]]}]) is None
    )


@pytest.mark.parametrize(
    "text",
    [
        '[{"image_id": "1", "category_id": 1, "score": 0.5}]',  # a string id
        '[{"image_id": 1.0, "category_id": 1, "score": 0.5}]',  # a float id
        '[{"image_id": 1, "category_id": 1, "score": 0.5, '
        '"segmentation": {"size": [3, 5], "counts": "05\\u0033"}}]',  # a unicode escape in an RLE
        '[{"image_id": 1, "category_id": 1, "score": 0.5}] x',  # bytes after the list
        '[{"image_id": 1, "category_id": 1, "score": 0.5}',  # cut off
        '{"image_id": 1}',  # not a list
        '[{"image_id": 1, "category_id": 1, "score": 0.5, "note": "\u00e9"}]',  # non-ASCII: the exact route
    ],
)
def test_layouts_it_cannot_vouch_for(tmp_path, text):
    assert parse_of(tmp_path, None, text=text) is None


def test_whitespace_everywhere_and_sha256(tmp_path):
    dets = [det_rect(i % 3 + 1, 1 + i % 2, 0.5, 1, 1, 4, 4, 16, 16) for i in range(40)]
    text = json.dumps(dets, indent=1)
    p = parse_of(tmp_path, None, text=text, sha256=True)
    assert p.num_dets == 40 and p.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert np.array_equal(p.ints[:, K.C_IMG], [d["image_id"] for d in dets])
    # the RLE strings are read from the file where the columns say
    spans = [bytes(p.buf[s:e]).decode() for s, e in p.ints[:, [K.C_RLE_START, K.C_RLE_END]]]
    assert spans == [d["segmentation"]["counts"] for d in dets]


def test_characters_are_checked_at_every_offset(tmp_path):
    from lvisctl.evaluation.results_io import rle_run_totals

    for k in range(17):
        clean = "0" * k + "1" * 24
        big = (1, rle_run_totals([clean])[0])  # runs cover the mask exactly (short runs are bad too)
        for bad in ("~", " ", "p", "\u00e9", ",", "-", "."):
            counts = clean[:k] + bad + clean[k:]
            text = json.dumps([det(2, clean, big), det(2, counts, big)], ensure_ascii=False)
            assert parse_of(tmp_path, None, text=text) is None, (k, bad)
        assert parse_of(tmp_path, [det(2, clean, big), det(2, clean + "P", big)]) is None  # "continued"
        assert parse_of(tmp_path, [det(2, clean, big)]) is not None


def _reference_decode(text: bytes) -> tuple[int, int] | None:
    """(run total, foreground area) of a json-quoted RLE body, byte by byte as pycocotools' ``rleFrString``
    reads it, with the reader's checks (characters '0'..'o', an escaped backslash, no negative or huge
    run, no number left "continued"); None where the reader must refuse it."""
    total = area = m = x = shift = 0
    prev = [0, 0]
    i = 0
    while i < len(text):
        c = text[i]
        i += 1
        v = c - 48
        if not 0 <= v <= 63:
            return None
        if c == 92:
            if i >= len(text) or text[i] != 92:
                return None
            i += 1
        x |= (v & 0x1F) << shift
        shift += 5
        if v & 0x20:
            if shift > 55:
                return None
            continue
        if v & 0x10:
            x |= -1 << shift
        if m > 2:
            x += prev[0]
        if x < 0 or x > K.MAX_RUN:
            return None
        total += x
        area += x if m & 1 else 0
        prev = [prev[1], x]
        m += 1
        x = shift = 0
    return None if shift else (total, area)


def test_rle_decoder_equals_the_byte_by_byte_reading_at_every_alignment():
    # decode_rle reads eight one-character numbers at an 8-byte boundary as one word: its totals, areas
    # and refusals must be those of the byte-by-byte reading wherever the string starts and whatever it
    # holds (real masks' strings, runs of small differences, and characters it must refuse)
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(60):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        mask = np.asfortranarray(rng.random((h, w)) < rng.uniform(0.05, 0.95), dtype=np.uint8)
        bodies.append(mask_utils.encode(mask)["counts"])
        assert _reference_decode(bodies[-1].replace(b"\\", b"\\\\")) == (h * w, int(mask.sum()))
    one_char = np.frombuffer(b"0123456789:;<=>?@ABCDEFGHIJKLMNO", np.uint8)
    anything = np.frombuffer(
        b"0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmno~ \x7f\xc3", np.uint8
    )
    for _ in range(3000):
        pool = one_char if rng.random() < 0.6 else anything
        body = bytes(rng.choice(pool, int(rng.integers(0, 40))))
        if rng.random() < 0.3:
            body = b"0" * int(rng.integers(3, 9)) + body  # past the three plain counts: differences
        bodies.append(body)
    bodies += [b"\\0", b"000" + b"\\0" * 9, b"000" + b"1" * 20 + b"\xc3\xa9"]  # a backslash: 0x20 | 12
    for body in bodies:
        escaped = body.replace(b"\\", b"\\\\")  # as json writes it
        want = _reference_decode(escaped)
        for offset in range(8):
            buf = np.frombuffer(b" " * offset + b'"' + escaped + b'",' + b" " * 9, np.uint8)
            end, total, area, ok = K.decode_rle(buf, offset, len(buf))
            assert ok == (want is not None), (body, offset)
            if ok:
                assert (total, area) == want and end == offset + len(escaped) + 2, (body, offset)
