"""The compiled results screen: RLE decoding by hand, flags, block boundaries, layouts it distrusts."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lvisctl.evaluation import results_scan
from lvisctl.evaluation.results_scan import ScanJob, scan_problems, scan_results
from tests.helpers.lvis_reference import det_rect

pytest.importorskip("numba")  # a dependency; without it evaluate falls back to the Python validator

# Hand-encoded compressed RLEs (each checked against pycocotools' encoder):
#   "0532" = runs 0, 5, 3, 7: the 4th count is stored as 7 - 5 = 2 (differences to two places back)
#            -> 15 pixels: exactly a 3x5 image, 5 too many for 2x5.
#   "T3"   = one run of 100: 'T' = 84 -> 36 = 0x20 | 4 (continued, low bits 4), '3' -> 3: 4 + 3 * 32.
#   ":5:M" = runs 10, 5, 10, 2: 'M' -> 29 = 0x10 | 13, sign bit set: 29 - 32 = -3, and 5 - 3 = 2.
SIZES = {1: (3, 5), 2: (10, 10), 3: (3, 9), 4: (2, 5)}


def det(image_id: int, counts: str, size=None, **extra) -> dict:
    h, w = size or SIZES[image_id]
    return {
        "image_id": image_id,
        "category_id": 1,
        "score": 0.5,
        "segmentation": {"size": [h, w], "counts": counts},
        **extra,
    }


def scan_of(tmp_path, dets, text=None, **kw):
    path = tmp_path / "r.json"
    path.write_text(text if text is not None else json.dumps(dets))
    return scan_results(path, **kw)


def test_hand_encoded_rles_are_valid_and_runs_are_totalled(tmp_path):
    s = scan_of(tmp_path, [det(1, "0532"), det(2, "T3"), det(3, ":5:M")])
    assert (s.num_dets, s.num_segmentation, s.num_bbox, s.num_bad_rle, s.distrusted) == (3, 3, 0, 0, False)
    assert s.image_sizes.tolist() == [[1, 3, 5], [2, 10, 10], [3, 3, 9]]
    assert scan_problems(s, 3, SIZES) == []


@pytest.mark.parametrize(
    "counts",
    [
        "0532",  # 15 runs' worth of pixels in a 2x5 image
        "0P",  # truncated: 'P' -> 32 says "continued"
        "0~",  # '~' is outside '0'..'o'
        "05M",  # the third count is stored as is: 'M' -> -3, a negative run
    ],
)
def test_bad_rles_are_flagged(tmp_path, counts):
    s = scan_of(tmp_path, [det(4, counts), det(1, "0532")])
    assert s.num_bad_rle == 1 and not s.distrusted
    assert scan_problems(s, 2, SIZES) == ["invalid RLE"]


def test_escaped_backslash_is_an_rle_character(tmp_path):
    # '\\' (92) -> 44 = 0x20 | 12: continued; then '0' ends the number: 12 -> one run of 12 = 3x4.
    s = scan_of(tmp_path, [det(1, "\\0", size=(3, 4))])
    assert s.num_bad_rle == 0 and s.image_sizes.tolist() == [[1, 3, 4]]
    assert scan_problems(s, 1, SIZES) == ["RLE size differs from image size"]


def test_counts_fields_and_other_problems(tmp_path):
    dets = [det(1, "0532", bbox=[0, 0, 1, 1]), det(2, "T3"), {"image_id": 9, "category_id": 1, "score": 0.1}]
    dets.append({"category_id": 1, "score": 0.1, "segmentation": [[0, 0, 1, 1, 1, 0]]})  # no id, polygon
    s = scan_of(tmp_path, dets)
    assert (s.num_dets, s.num_bbox, s.num_segmentation, s.num_without_image_id) == (4, 1, 3, 1)
    assert s.num_bad_rle == 1  # the polygon is not compressed RLE
    assert s.image_ids.tolist() == [1, 2, 9]
    assert scan_problems(s, 4, SIZES) == [
        "detections without image_id",
        "bbox on some detections only",
        "segmentation on some detections only",
        "invalid RLE",
        "unknown image ids",
    ]
    assert scan_problems(s, 5, SIZES)[0] == "detection count differs from the evaluator's"


@pytest.mark.parametrize(
    "text",
    [
        '[{"image_id": "1", "score": 0.5}]',  # a string id
        '[{"image_id": 1.0, "score": 0.5}]',  # a float id
        '[{"image_id": 1, "segmentation": {"size": [3, 5], "counts": "05\\u0033"}}]',  # unicode escape
        '[{"image_id": 1, "score": 0.5}] x',  # bytes after the list
        '[{"image_id": 1, "score": 0.5}',  # cut off
        '{"image_id": 1}',  # not a list
    ],
)
def test_layouts_it_cannot_vouch_for_are_distrusted(tmp_path, text):
    s = scan_of(tmp_path, None, text=text)
    assert s.distrusted and scan_problems(s, 1, SIZES)[0] == "unusual json layout"


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "memory-mapped"])
@pytest.mark.parametrize("decode", [True, False])
def test_block_boundaries_and_sha256(tmp_path, monkeypatch, decode, mapped):
    if mapped:  # big files are memory-mapped: here every file
        monkeypatch.setattr(results_scan, "MAP_ABOVE_BYTES", 0)
    dets = [det_rect(i % 3 + 1, 1 + i % 2, 0.5, 1, 1, 4, 4, 16, 16) for i in range(40)]
    dets[5]["segmentation"]["counts"] = "\\0" * 9 + "01234567"  # escapes and 8-byte words to skip
    text = json.dumps(dets, indent=1)  # whitespace everywhere
    whole = scan_of(tmp_path, None, text=text, sha256=True, decode=decode)
    assert whole.num_dets == 40 and not whole.distrusted
    assert whole.sha256 == hashlib.sha256(text.encode()).hexdigest()
    for block in (7, 64, 1000):  # cuts inside keys, numbers and RLE strings
        s = scan_of(tmp_path, None, text=text, block_bytes=block, sha256=True, decode=decode)
        expected = (40, 40, int(decode), False, whole.sha256)  # dets[5]'s runs overflow 16x16
        assert (s.num_dets, s.num_bbox, s.num_bad_rle, s.distrusted, s.sha256) == expected
        assert np.array_equal(s.image_sizes, whole.image_sizes)
    assert scan_of(tmp_path, [], block_bytes=1).num_dets == 0


def test_forked_job_returns_the_same_summary(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([det(1, "0532"), det(4, "0532")]))
    forked = ScanJob(path, fork=True, sha256=True).result()
    inline = ScanJob(path, fork=False, sha256=True).result()
    assert forked.num_bad_rle == inline.num_bad_rle == 1
    assert forked.sha256 == inline.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and np.array_equal(
        forked.image_sizes, inline.image_sizes
    )
    job = ScanJob(path, fork=True)
    job.cancel()  # an error elsewhere: the side process is reaped, nothing is left waiting
    assert job.result() is None


def test_without_decoding_only_the_characters_are_checked(tmp_path):
    # Files without boxes: hotcoco decodes every RLE for its mask area (and leaves it empty where the runs
    # overflow), so the screen checks only what hotcoco's decoder does not: the characters and truncation.
    s = scan_of(tmp_path, [det(4, "0532"), det(1, "0~"), det(1, "0P")], decode=False)
    assert (s.num_dets, s.num_bad_rle, s.rles_decoded, s.distrusted) == (3, 2, False, False)
    assert s.image_sizes.tolist() == [[1, 3, 5], [4, 2, 5]]


@pytest.mark.parametrize("decode", [True, False])
def test_characters_are_checked_at_every_offset_of_an_8_byte_word(tmp_path, decode):
    # The undecoded route checks 8 bytes at a time: a bad byte must be found wherever it falls in a word,
    # and a clean string must pass whatever its alignment in the file.
    from lvisctl.evaluation.results_io import rle_run_totals

    for k in range(17):
        clean = "0" * k + "1" * 24
        big = (1, rle_run_totals([clean])[0])  # runs cover the mask exactly (short runs are bad too)
        for bad in ("~", " ", "p", "\u00e9", ",", "-", "."):
            counts = clean[:k] + bad + clean[k:]
            text = json.dumps([det(2, clean, big), det(2, counts, big)], ensure_ascii=False)
            s = scan_of(tmp_path, None, text=text, decode=decode)
            assert (s.num_bad_rle, s.distrusted) == (1, False), (k, bad)
        s = scan_of(tmp_path, [det(2, clean, big), det(2, clean + "P", big)], decode=decode)  # "continued"
        assert (s.num_dets, s.num_bad_rle, s.distrusted) == (2, 1, False), k


def test_decoded_runs_must_cover_the_mask_exactly(tmp_path):
    """Issue 22 item 16: runs covering 2 of 4096 pixels were accepted (only an overflow was refused)."""
    s = scan_of(tmp_path, [det(1, "11", (64, 64)), det(1, "01", (1, 1))], decode=True)
    assert (s.num_dets, s.num_bad_rle) == (2, 1)
