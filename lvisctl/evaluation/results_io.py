"""Loading and validating LVIS results files (the json list of detections the evaluator and server take).

:func:`validate_results` checks a parsed list, detection by detection, and names every problem: the exact
route of :func:`lvisctl.evaluation.validate.validate`, the one entry point callers use (its fast route for
files is the strict compiled reader of ``results_parse``: parsing 1.5 M detections into Python dicts
costs more than the evaluation).
Results files are written by ``lvisctl.inference.results.write_results`` only.

An RLE is valid when its ``size`` is the image's and hotcoco's decoder accepts its ``counts``
(characters ``'0'..'o'``, runs that fit in ``h * w``; a shorter RLE means trailing background, as in
pycocotools).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lvisctl.errors import LvisctlError, raise_problems
from lvisctl.rundir.io import read_json

MAX_DETS_PER_IMAGE = 300
_SHOWN_PROBLEMS = 5


@dataclass(frozen=True)
class ImageTable:
    """What validation needs from a GT or image-info file: image sizes and the category table."""

    sizes: Mapping[int, tuple[int, int]]  # image id -> (height, width)
    cat_ids: frozenset[int]
    path: str


def load_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse a results file in Python (``rundir.io.read_json``, the one json reader); a clear error if it is
    not a json list."""
    data = read_json(path)
    if not isinstance(data, list):
        raise LvisctlError(
            f"{path}: results must be a json list of detections, got a json {type(data).__name__}"
        )
    return data


_FIRST_DET_END = re.compile(rb"\}\s*,\s*\{|\}\s*\]")


def first_detection_keys(path: str | os.PathLike[str], head_bytes: int = 1 << 20) -> tuple[bool, bool, bool]:
    """(is a json list, first detection has 'bbox', has 'segmentation'), from the first bytes only.

    The validator checks later that every detection has the same fields; this is enough to pick the
    note and the "no segmentation" error of the hotcoco route before its evaluation starts.
    """
    with open(path, "rb") as fh:
        head = fh.read(head_bytes)
    if not head.lstrip().startswith(b"["):
        return False, False, False
    match = _FIRST_DET_END.search(head)  # '}' cannot occur in an RLE string
    first = head[: match.start() + 1] if match else head
    return True, b'"bbox"' in first, b'"segmentation"' in first


# --------------------------------------------------------------------------------------------- RLE
_RLE_CHARS = bytes(range(48, 112))  # '0'..'o', the alphabet of compressed RLE


def rle_string_flags(counts: Sequence[bytes]) -> np.ndarray:
    """Per counts string: True where it has a character outside ``'0'..'o'`` or ends mid-number.

    Each character carries 5 bits and a continuation bit (0x20 after subtracting 48); a string whose last
    character still says "continued" is truncated. hotcoco accepts both silently, so they are checked here.
    Vectorised: one join, one translate for the common all-clean case.
    """
    n = len(counts)
    joined = b"\x00".join(counts) + b"\x00"
    if not joined.translate(None, _RLE_CHARS + b"\x00"):
        arr = np.frombuffer(joined, dtype=np.uint8)
        ends = np.flatnonzero(arr == 0)
        last = arr[np.maximum(ends - 1, 0)].astype(np.int64)
        nonempty = np.diff(np.concatenate(([-1], ends))) > 1
        return nonempty & (((last - 48) & 0x20) != 0)
    flags = np.zeros(n, dtype=bool)
    for i, c in enumerate(counts):
        flags[i] = bool(c.translate(None, _RLE_CHARS)) or (len(c) > 0 and (c[-1] - 48) & 0x20 != 0)
    return flags


def find_bad_rles(rles: Sequence[Mapping[str, Any]], limit: int = _SHOWN_PROBLEMS) -> list[tuple[int, str]]:
    """Indices (and hotcoco's reason) of RLEs that do not decode, at most ``limit`` of them.

    hotcoco's Rust decoder checks the characters and that the runs fit in ``h * w``, in one call for the
    whole list; a failing list is bisected to name the culprits, so clean files cost one pass.
    """
    import hotcoco.mask

    found: list[tuple[int, str]] = []

    def check(lo: int, hi: int) -> None:
        if lo >= hi or len(found) >= limit:
            return
        try:
            hotcoco.mask.area(list(rles[lo:hi]))
            return
        except (ValueError, TypeError, KeyError, OverflowError) as err:
            if hi - lo == 1:
                found.append((lo, str(err).splitlines()[0]))
                return
        mid = (lo + hi) // 2
        check(lo, mid)
        check(mid, hi)

    check(0, len(rles))
    return found


# ------------------------------------------------------------------------------- full validation
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_results(
    results: Any,
    table: ImageTable,
    *,
    source: object,
    for_submission: bool = False,
) -> None:
    """Check every detection; raise one ``LvisctlError`` line naming the problems found (all counted).

    ``for_submission`` adds the server's rules: scores in [0, 1], boxes inside the image, and at most
    300 detections per image (``submission.py`` truncates before calling this when asked to).
    """
    if not isinstance(results, list):
        raise LvisctlError(
            f"{source}: results must be a json list of detections, got {type(results).__name__}"
        )
    problems: list[str] = []
    count = 0

    def problem(msg: str) -> None:
        nonlocal count
        count += 1
        if len(problems) < _SHOWN_PROBLEMS:
            problems.append(msg)

    unknown_images: set[Any] = set()
    known_image_dets = 0
    unknown_cats: set[Any] = set()
    rle_idx: list[int] = []
    with_bbox = 0
    per_image: dict[int, int] = {}
    for i, det in enumerate(results):
        if not isinstance(det, dict):
            problem(f"result {i} is a json {type(det).__name__}, not an object")
            continue
        img = det.get("image_id")
        if img not in table.sizes:
            unknown_images.add(img if isinstance(img, (int, str)) else repr(img))
            size = None
        else:
            known_image_dets += 1
            size = table.sizes[img]
            per_image[img] = per_image.get(img, 0) + 1
        cat = det.get("category_id")
        if not isinstance(cat, int) or isinstance(cat, bool) or cat not in table.cat_ids:
            unknown_cats.add(cat if isinstance(cat, (int, str)) else repr(cat))
        score = det.get("score")
        if not _is_number(score) or not math.isfinite(score):
            problem(f"result {i} has score {score!r} (must be a finite number)")
        elif for_submission and not 0.0 <= score <= 1.0:
            problem(f"result {i} has score {score!r} outside [0, 1]")
        if "bbox" in det:
            with_bbox += 1
            _check_bbox(det["bbox"], i, size if for_submission else None, problem)
        seg = det.get("segmentation")
        if seg is None:
            continue
        if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str):
            problem(f"result {i}: segmentation must be compressed RLE {{'size': [h, w], 'counts': str}}")
            continue
        seg_size = seg.get("size")
        if size is not None and (not isinstance(seg_size, list) or [*seg_size] != [*size]):
            problem(f"result {i}: RLE size {seg_size!r} differs from image {img}'s size {[*size]!r}")
            continue
        rle_idx.append(i)
    if results and known_image_dets == 0:
        raise LvisctlError(
            f"{source}: none of its {len(unknown_images)} image ids are in {table.path} "
            "(a results file for another split?)"
        )
    if unknown_images:
        problem(
            f"{len(unknown_images)} image ids not in {table.path} (e.g. {_examples(unknown_images)})"
            + _string_hint(unknown_images)
        )
    if unknown_cats:
        problem(
            f"{len(unknown_cats)} category ids not in the category table (e.g. {_examples(unknown_cats)})"
            + _string_hint(unknown_cats)
        )
    if 0 < with_bbox < len(results):
        problem(f"{with_bbox} of {len(results)} results have 'bbox' (lvis-api needs all or none)")
    seg_count = sum(1 for d in results if isinstance(d, dict) and "segmentation" in d)
    if 0 < seg_count < len(results):
        problem(f"{seg_count} of {len(results)} results have 'segmentation' (all or none)")
    if for_submission and results and seg_count == 0:
        raise LvisctlError(
            f"{source}: has no 'segmentation' fields; the LVIS server scores masks "
            "(submit the .segm.json of tta-infer, not the .bbox.json)"
        )
    _check_rles(results, rle_idx, problem)
    if for_submission:
        over = {k: n for k, n in per_image.items() if n > MAX_DETS_PER_IMAGE}
        if over:
            img, n = max(over.items(), key=lambda kv: kv[1])
            problem(
                f"{len(over)} images have more than {MAX_DETS_PER_IMAGE} detections (image {img} has {n}); "
                "pass --truncate to keep the top 300 by score"
            )
    raise_problems(source, problems, count)


def _check_bbox(box: Any, i: int, size: tuple[int, int] | None, problem) -> None:
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) and math.isfinite(v) for v in box):
        problem(f"result {i}: bbox must be [x, y, w, h] with 4 finite numbers, got {box!r}")
        return
    x, y, w, h = box
    if w < 0 or h < 0:
        problem(f"result {i}: bbox {box!r} has a negative width or height")
    elif size is not None:
        H, W = size
        tol = 1.0  # rounding of float boxes written with 2 decimals
        if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
            problem(f"result {i}: bbox {box!r} lies outside the {W}x{H} image")


def _check_rles(results, rle_idx: list[int], problem) -> None:
    if not rle_idx:
        return
    counts = [results[i]["segmentation"]["counts"].encode("latin-1", "replace") for i in rle_idx]
    flagged = rle_string_flags(counts)
    for j in np.flatnonzero(flagged):
        problem(
            f"result {rle_idx[j]}: segmentation is not valid compressed RLE (bad characters or truncated)"
        )
    rest = [i for i, f in zip(rle_idx, flagged, strict=True) if not f]
    bad = find_bad_rles([results[i]["segmentation"] for i in rest], limit=len(rest))
    for j, reason in bad:
        problem(f"result {rest[j]}: segmentation is not valid compressed RLE ({reason})")
    failed = {rest[j] for j, _ in bad}
    decoded = [i for i in rest if i not in failed]
    totals = rle_run_totals([results[i]["segmentation"]["counts"] for i in decoded])
    for i, total in zip(decoded, totals, strict=True):
        h, w = results[i]["segmentation"]["size"]
        if (
            total != h * w
        ):  # short runs: pycocotools leaves the rest of the mask unset (the GT loader refuses)
            problem(f"result {i}: segmentation runs cover {total} of the {h}x{w} = {h * w} pixels")


def rle_run_totals(counts: Sequence[str]) -> list[int]:
    """The number of pixels each compressed RLE string's runs add up to (-1: does not decode)."""
    if not counts:
        return []
    try:
        from lvisctl.evaluation._parse_kernel import rle_run_totals as kernel
    except ImportError:  # numba missing: the same decoding in Python
        return [_run_total(c) for c in counts]
    # the kernel reads json text: each string quoted, a backslash (a legal RLE character) escaped
    quoted = [b'"' + c.encode("latin-1", "replace").replace(b"\\", b"\\\\") + b'"' for c in counts]
    starts = np.cumsum([0] + [len(q) for q in quoted[:-1]], dtype=np.int64)
    return kernel(np.frombuffer(b"".join(quoted), dtype=np.uint8), starts).tolist()


def _run_total(counts: str) -> int:
    """pycocotools' ``rleFrString``, summing the runs."""
    total = x = shift = m = prev1 = prev2 = 0
    for ch in counts:
        v = ord(ch) - 48
        x |= (v & 0x1F) << shift
        shift += 5
        if v & 0x20:
            continue
        if v & 0x10:
            x |= -1 << shift
        if m > 2:
            x += prev2
        if x < 0:
            return -1
        total, prev2, prev1, m, x, shift = total + x, prev1, x, m + 1, 0, 0
    return total


def _examples(values: set[Any], k: int = 3) -> str:
    def key(v: Any) -> tuple[int, str]:
        return (0, f"{v:012d}") if isinstance(v, int) else (1, str(v))

    # a string id is shown quoted: "49" is not the integer 49 the GT has
    return ", ".join(json.dumps(v) if isinstance(v, str) else str(v) for v in sorted(values, key=key)[:k])


def _string_hint(values: set[Any]) -> str:
    return "; ids must be json integers, not strings" if any(isinstance(v, str) for v in values) else ""
