"""lvis-api's federated evaluation of a results file in one parse, on every core: ``evaluate``'s usual route.

hotcoco parses the results into its own objects and evaluates them; the screen that validates the file
walked it a second time. Here one strict pass (``results_parse``) validates the file and yields columns,
and lvis-api's ``evaluate_img`` runs per image in compiled code (``_eval_kernel``) with no Python object
per detection, so the images are shared among threads (one per core) and the work of a thread is only
numbers; its ``accumulate`` likewise (``_columns_kernel``, categories shared among the threads). The GT
masks (polygons rasterised to RLE exactly as lvis-api's ``ann_to_rle``) are made while the results are
read; a box-only evaluation reads the GT's boxes with a compiled reader instead (``_gt_kernel``). The
numbers are lvis-api's: the same cap, filters, matching and 101-point curves
(``tests/unit/test_eval_fast.py`` against lvis-api 0.5.3 and hotcoco; the summary is
``federated_eval._summarize``).

Where the strict reader does not vouch for a file, :func:`fast_evaluate` returns ``None`` and the caller
takes the hotcoco route with the exact validator, which names the problem.
"""

from __future__ import annotations

import importlib
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvisctl.evaluation.federated_eval import AREA_RNGS, IOU_THRS, REC_THRS, _summarize
from lvisctl.evaluation.results_io import MAX_DETS_PER_IMAGE
from lvisctl.evaluation.results_parse import (
    DetectionColumns,
    ParsedResults,
    parse_results,
    vouch,
    worker_count,
)

_AREAS = np.array(list(AREA_RNGS.values()), dtype=np.float64)
_KIND = {"segm": 0, "bbox": 1}


@dataclass
class GroundTruthArrays:
    """The GT of an ``LvisGroundTruth`` as columns: images sorted by id, annotations (area > 0) sorted by
    image, in file order within an image; GT masks as compressed RLE strings in one buffer."""

    image_ids: np.ndarray
    cat_ids: np.ndarray  # sorted; a category's index is its position
    heights: np.ndarray
    widths: np.ndarray
    g_start: np.ndarray  # CSR: image i's annotations are rows g_start[i] .. g_start[i + 1] - 1
    g_cat: np.ndarray
    g_area: np.ndarray
    g_ign: np.ndarray
    g_box: np.ndarray
    neg: tuple[np.ndarray, np.ndarray]  # CSR starts and category indices
    not_exhaustive: tuple[np.ndarray, np.ndarray]
    anns: list[dict[str, Any]] | None  # the annotations' records (None: read for boxes only)
    rles: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # buffer, starts, ends (made on demand)


def _csr(lists: Sequence[Sequence[int]], index: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    kept = [[index[c] for c in cats if c in index] for cats in lists]
    starts = np.zeros(len(kept) + 1, np.int64)
    np.cumsum([len(k) for k in kept], out=starts[1:])
    flat = np.fromiter((c for k in kept for c in k), np.int64, int(starts[-1]))
    return starts, flat


def gt_arrays(gt: Any, masks: bool = True) -> GroundTruthArrays:
    """Columns of ``gt`` (an ``LvisGroundTruth``), cached on it (a second results file reuses them).

    ``masks``: the annotations' records are needed too (``gt_rles`` rasterises their polygons); without,
    the box fields are read from the file by a compiled reader (:func:`_box_columns`) where it can."""
    cached = getattr(gt, "_fast_arrays", None)
    if cached is not None and (cached.anns is not None or not masks):
        return cached
    images = sorted(gt.coco.imgs.values(), key=lambda r: r["id"])
    image_ids = np.array([r["id"] for r in images], np.int64)
    cat_ids = np.array(sorted(gt.categories), np.int64)
    cat_index = {int(c): k for k, c in enumerate(cat_ids)}
    boxes = None if masks else _box_columns(gt, image_ids, cat_ids)
    if boxes is None:
        boxes = _annotation_columns(gt.coco.dataset["annotations"], image_ids, cat_index)
    g_start, g_cat, g_area, g_ign, g_box, anns = boxes
    arrays = GroundTruthArrays(
        image_ids=image_ids,
        cat_ids=cat_ids,
        heights=np.array([r["height"] for r in images], np.int64),
        widths=np.array([r["width"] for r in images], np.int64),
        g_start=g_start,
        g_cat=g_cat,
        g_area=g_area,
        g_ign=g_ign,
        g_box=g_box,
        neg=_csr([r.get("neg_category_ids", ()) for r in images], cat_index),
        not_exhaustive=_csr([r.get("not_exhaustive_category_ids", ()) for r in images], cat_index),
        anns=anns,
    )
    gt._fast_arrays = arrays
    return arrays


def _annotation_columns(annotations: list[dict[str, Any]], image_ids: np.ndarray, cat_index: dict[int, int]):
    """(g_start, g_cat, g_area, g_ign, g_box, records) of the annotations of area > 0 (lvis-api evaluates
    those only), sorted by image, in file order within an image."""
    img_index = {int(i): k for k, i in enumerate(image_ids)}
    anns = [a for a in annotations if a["area"] > 0]
    img_of = np.array([img_index[a["image_id"]] for a in anns], np.int64)
    order = np.argsort(img_of, kind="stable")
    anns = [anns[k] for k in order]
    g_start = np.zeros(len(image_ids) + 1, np.int64)
    np.cumsum(np.bincount(img_of, minlength=len(image_ids)), out=g_start[1:])
    return (
        g_start,
        np.array([cat_index[a["category_id"]] for a in anns], np.int64),
        np.array([a["area"] for a in anns], np.float64),
        np.array([bool(a.get("ignore", 0)) for a in anns], np.bool_),
        np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4),
        anns,
    )


_GT_KEYS = (b"annotations", b"image_id", b"category_id", b"area", b"bbox", b"ignore")


def _box_columns(gt: Any, image_ids: np.ndarray, cat_ids: np.ndarray):
    """What :func:`_annotation_columns` returns (records: None), read from the GT file by the compiled
    reader (``_gt_kernel``); None where it refuses the file or finds other annotations than hotcoco's."""
    from lvisctl.evaluation import _gt_kernel as G
    from lvisctl.evaluation.lvis_metrics import POSITIVE_AREA

    path = getattr(gt.table, "path", "")
    if not path or not Path(path).is_file() or len(image_ids) == 0:
        return None
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return None
        mm = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    buf = np.frombuffer(mm, np.uint8)
    keys = tuple(np.frombuffer(k, np.uint8) for k in _GT_KEYS)
    capacity = max(1024, 2 * len(gt.coco.get_ann_ids()))
    while True:
        ints, flt = np.empty((capacity, 3), np.int64), np.empty((capacity, 5), np.float64)
        rows = G.read_annotations(buf, keys, ints, flt)
        if rows != G.FULL:
            break
        capacity *= 2
    if rows < 0:
        return None
    ints, flt = ints[:rows], flt[:rows]
    kept = flt[:, 0] > 0
    ints, flt = ints[kept], flt[kept]
    # hotcoco's dataset holds the same annotations of area > 0 (the file did not change since it was read)
    if len(ints) != len(gt.coco.get_ann_ids(area_rng=POSITIVE_AREA)):
        return None
    img_at = np.searchsorted(image_ids, ints[:, 0])
    cat_at = np.searchsorted(cat_ids, ints[:, 1])
    if len(ints) and (
        img_at.max() >= len(image_ids)
        or cat_at.max() >= len(cat_ids)
        or (image_ids[img_at] != ints[:, 0]).any()
        or (cat_ids[cat_at] != ints[:, 1]).any()
    ):
        return None  # an id hotcoco's records would not resolve: the Python route says so
    order = np.argsort(img_at, kind="stable")
    g_start = np.zeros(len(image_ids) + 1, np.int64)
    np.cumsum(np.bincount(img_at, minlength=len(image_ids)), out=g_start[1:])
    flt = flt[order]
    box = np.ascontiguousarray(flt[:, 1:])
    return g_start, cat_at[order], flt[:, 0].copy(), ints[order, 2] != 0, box, None


def gt_rles(gt: Any, arrays: GroundTruthArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The GT masks as compressed RLE strings (lvis-api's ``ann_to_rle``: polygons rasterised at the
    image's size and merged), in one buffer with start / end offsets, in ``arrays``' row order."""
    if arrays.rles is not None:
        return arrays.rles
    import hotcoco.mask

    strings: list[bytes] = []
    sizes = {int(i): (int(h), int(w)) for i, (h, w) in _image_sizes(gt).items()}
    anns = arrays.anns
    for k in range(len(arrays.image_ids)):
        group = anns[arrays.g_start[k] : arrays.g_start[k + 1]]
        if not group:
            continue
        h, w = sizes[int(arrays.image_ids[k])]
        if all(isinstance(a["segmentation"], list) and len(a["segmentation"]) == 1 for a in group):
            # one polygon per annotation (the usual case): one call for the image, no merge needed
            rles = hotcoco.mask.fr_py_objects([a["segmentation"][0] for a in group], h, w)
        else:
            rles = [gt.coco.ann_to_rle(a) for a in group]
        strings += [r["counts"] if isinstance(r["counts"], bytes) else r["counts"].encode() for r in rles]
    ends = np.cumsum([len(s) for s in strings], dtype=np.int64)
    starts = ends - np.array([len(s) for s in strings], np.int64)
    arrays.rles = (np.frombuffer(b"".join(strings) or b"\0", np.uint8), starts, ends)
    return arrays.rles


def _image_sizes(gt: Any) -> dict[int, tuple[int, int]]:
    return dict(gt.table.sizes)


@dataclass
class FastResults:
    """What ``evaluate`` needs of a results file evaluated here."""

    path: Path
    metrics: dict[str, tuple[dict[str, float], dict[int, float]]]  # iou type -> (summary, per category AP)
    has_bbox: bool
    zero_area: int  # capped detections of area 0, not scored (as lvis-api)
    sha256: str = ""


@contextmanager
def _small_pages() -> Iterator[None]:
    """numpy without its transparent-huge-page hint for large arrays, restored after.

    The hint makes a large array's first touch fault in 2 MB pages, which on a host whose memory is
    fragmented (the kernel's default ``defrag=madvise`` then compacts memory inside the fault) cost more
    than 4 KB pages: at 5,000 images x 300 detections, 0.83 system CPU s against 0.31-0.38 for a box
    evaluation (measured on the shared 2-core VM), a fifth of bare hotcoco's whole run."""
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:
        yield
        return
    previous = setter(False)
    try:
        yield
    finally:
        setter(previous)


def fast_evaluate(
    path: str | Path, gt: Any, iou_types: Sequence[str], *, sha256: bool = False
) -> FastResults | None:
    """lvis-api's metrics of the results file ``path`` for each iou type, or None where the strict reader
    does not vouch for the file (or it needs hotcoco: boxes derived from masks), or numba is missing."""
    try:
        importlib.import_module("lvisctl.evaluation._eval_kernel")
    except ImportError:
        return None
    with _small_pages():
        return _fast_evaluate(path, gt, iou_types, sha256)


def _fast_evaluate(path: str | Path, gt: Any, iou_types: Sequence[str], sha256: bool) -> FastResults | None:
    parsed: list[ParsedResults | None] = []
    reader = threading.Thread(target=lambda: parsed.append(parse_results(path, sha256=sha256)))
    reader.start()
    try:  # the GT columns and masks while the results are read (this holds the GIL; the reader does not)
        arrays = gt_arrays(gt, masks="segm" in iou_types)
        if "segm" in iou_types:
            gt_rles(gt, arrays)
    finally:
        reader.join()
    res = parsed[0] if parsed else None
    if res is None:
        return None
    if ("segm" in iou_types and not res.has_segmentation) or ("bbox" in iou_types and not res.has_bbox):
        return None  # the hotcoco route: its message, or boxes derived from the masks
    cols = vouch(res, arrays.image_ids, (arrays.heights, arrays.widths), arrays.cat_ids)
    if cols is None:
        return None
    columns = _detection_columns(res, cols, arrays)
    metrics, zero = {}, 0
    for t in iou_types:
        metrics[t], zero = _evaluate_type(t, columns, arrays, gt.categories)
    return FastResults(Path(path), metrics, res.has_bbox, zero, res.sha256)


def _detection_columns(res: ParsedResults, cols: DetectionColumns, arrays: GroundTruthArrays):
    """(per image: first detection row, detections sorted by image in file order as the kernel's tuple)."""
    d_start = np.zeros(len(arrays.image_ids) + 1, np.int64)
    np.cumsum(np.bincount(cols.img, minlength=len(arrays.image_ids)), out=d_start[1:])
    if (np.diff(cols.img) < 0).any():  # results files usually list detections image by image: no copy then
        cols = cols.take(np.argsort(cols.img, kind="stable"))
    dets = (cols.cat, cols.score, cols.area, cols.mask_area, cols.box, cols.rle_start, cols.rle_end, res.buf)
    return d_start, dets


def _evaluate_type(iou_type, columns, arrays: GroundTruthArrays, categories):
    """One iou type: images shared among threads, then lvis-api's accumulate and summary."""
    from lvisctl.evaluation._columns_kernel import accumulate, category_order
    from lvisctl.evaluation._eval_kernel import eval_images

    d_start, dets = columns
    num_img, num_k, num_a = len(arrays.image_ids), len(arrays.cat_ids), len(_AREAS)
    if iou_type == "segm" and arrays.rles is not None:
        gbuf, g_rs, g_re = arrays.rles
    else:  # box IoU reads no mask
        gbuf, g_rs, g_re = np.zeros(1, np.uint8), np.zeros_like(arrays.g_cat), np.zeros_like(arrays.g_cat)
    gts = (arrays.g_cat, arrays.g_area, arrays.g_ign, arrays.g_box, g_rs, g_re, gbuf)
    imgs = (d_start, arrays.g_start, arrays.heights, *arrays.neg, *arrays.not_exhaustive)
    params = (_AREAS, IOU_THRS, num_k)
    capped = np.minimum(np.diff(d_start), MAX_DETS_PER_IMAGE)
    o_start = np.zeros(num_img + 1, np.int64)
    np.cumsum(capped, out=o_start[1:])
    total = int(o_start[-1])
    o_cat, o_score = np.empty(total, np.int64), np.empty(total, np.float64)
    o_m, o_ig = np.empty((total, num_a), np.uint16), np.empty((total, num_a), np.uint16)
    o_n = np.zeros(num_img, np.int64)
    shards = _shards(d_start, worker_count())
    gt_counts = [np.zeros((num_k, num_a), np.int64) for _ in shards]
    zero = [0] * len(shards)

    def run(k: int) -> None:
        outs = (o_start, o_cat, o_score, o_m, o_ig, o_n, gt_counts[k])
        lo, hi = shards[k]
        zero[k] = eval_images(lo, hi, _KIND[iou_type], MAX_DETS_PER_IMAGE, imgs, dets, gts, params, outs)

    _run_threads(run, len(shards))
    # per category: score descending, ties in image order then in-image order (lvis-api's mergesort)
    bounds, m_bits, ig_bits = category_order(o_start, o_n, o_cat, o_score, o_m, o_ig, num_k)
    counts = sum(gt_counts)
    precision = -np.ones((len(IOU_THRS), len(REC_THRS), num_k, num_a))
    recall = -np.ones((len(IOU_THRS), num_k, num_a))
    # categories shared among threads, with about the same number of rows each
    parts = [(a, b) for a, b in _shards(bounds, worker_count()) if b > a] or [(0, num_k)]

    def curves(k: int) -> None:
        accumulate(*parts[k], bounds, m_bits, ig_bits, counts, REC_THRS, precision, recall)

    _run_threads(curves, len(parts))
    cat_ids = [int(c) for c in arrays.cat_ids]
    return _summarize(precision, recall, cat_ids, categories, MAX_DETS_PER_IMAGE), sum(zero)


def _run_threads(fn, count: int) -> None:
    """``fn(0) .. fn(count - 1)``, each in its own thread (the first in this one): compiled code that
    releases the GIL, so they run at once."""
    errors: list[BaseException] = []

    def guarded(k: int) -> None:
        try:
            fn(k)
        except BaseException as err:  # re-raised in this thread: a failed part must not pass silently
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(1, count)]
    for t in threads:
        t.start()
    guarded(0)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _shards(d_start: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Contiguous image ranges with about the same number of detections each."""
    num_img = len(d_start) - 1
    if parts <= 1 or num_img < 2 * parts:
        return [(0, num_img)]
    cuts = np.searchsorted(d_start, np.linspace(0, d_start[-1], parts + 1)[1:-1])
    edges = [0, *sorted(set(int(c) for c in cuts) - {0, num_img}), num_img]
    return list(zip(edges[:-1], edges[1:], strict=True))
