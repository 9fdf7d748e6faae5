"""Official LVIS v1 federated metrics (Gupta et al. 2019), computed by hotcoco's Rust port of lvis-api.

hotcoco 1.3 reproduces lvis-api 0.5.3 number for number (checked in tests against the real lvis-api)
and is ~20x faster; this module adds what a user needs around it: the results file is parsed once in
Rust, screened for bad input without building Python objects (``results_io``), capped at 300 detections
per image exactly as ``LVISResults`` does, and the per-category APs come back with the summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.results_io import (
    MAX_DETS_PER_IMAGE,
    ImageTable,
    load_results,
    scan_results_file,
    screen_problems,
    validate_results,
)

IOU_TYPES = ("segm", "bbox")
METRIC_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "APr",
    "APc",
    "APf",
    f"AR@{MAX_DETS_PER_IMAGE}",
    f"ARs@{MAX_DETS_PER_IMAGE}",
    f"ARm@{MAX_DETS_PER_IMAGE}",
    f"ARl@{MAX_DETS_PER_IMAGE}",
)
BBOX_AREA_NOTE = (
    "note: the results have 'bbox', so segm APs/APm/APl use box areas (as lvis-api does); "
    "results_io.write_results(..., mask_areas=True) writes files whose mask metrics use mask areas"
)


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence hotcoco's own prints (its summary table and load warnings go to fds 1/2 from Rust)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


@dataclass
class LvisGroundTruth:
    """A loaded LVIS annotation file: the hotcoco dataset plus what validation and reports need."""

    coco: Any
    table: ImageTable
    categories: dict[int, dict[str, Any]]  # id -> {"name", "frequency"}


def load_ground_truth(path: str | os.PathLike[str]) -> LvisGroundTruth:
    """Load an LVIS v1 annotation file (json parsed by hotcoco) and check it is a federated LVIS file."""
    import hotcoco

    p = Path(path)
    if not p.is_file():
        raise LvisctlError(f"{p}: no such file")
    try:
        with quiet_native_output():
            coco = hotcoco.COCO(str(p))
    except Exception as err:  # hotcoco raises ValueError/OSError/RuntimeError on malformed files
        raise LvisctlError(f"{p}: not a readable LVIS annotation file ({str(err).splitlines()[0]})") from None
    imgs, cats = coco.imgs, coco.cats
    if not imgs or not cats:
        raise LvisctlError(f"{p}: has no images or no categories")
    bad_freq = [c for c, rec in cats.items() if rec.get("frequency") not in ("r", "c", "f")]
    if bad_freq:
        raise LvisctlError(
            f"{p}: {len(bad_freq)} categories lack an r/c/f 'frequency' (e.g. id {bad_freq[0]}); "
            "not an LVIS file"
        )
    table = ImageTable(
        sizes={i: (int(r["height"]), int(r["width"])) for i, r in imgs.items()},
        cat_ids=frozenset(cats),
        path=str(p),
    )
    categories = {c: {"name": str(r.get("name", c)), "frequency": r["frequency"]} for c, r in cats.items()}
    return LvisGroundTruth(coco=coco, table=table, categories=categories)


@dataclass
class LoadedResults:
    """A results file parsed (and screened) for evaluation."""

    path: Path
    dets: Any  # hotcoco dataset of all detections in the file
    num_dets: int
    has_bbox: bool
    has_segmentation: bool
    notes: list[str] = field(default_factory=list)


def explain_and_raise(path: Path, gt: LvisGroundTruth, fallback: str) -> None:
    """Parse the file in Python and raise the precise problem list; ``fallback`` if it finds none."""
    validate_results(load_results(path), gt.table, source=path)
    raise LvisctlError(f"{path}: {fallback}")


def load_results_for_eval(path: str | os.PathLike[str], gt: LvisGroundTruth) -> LoadedResults:
    """Parse ``path`` with hotcoco and screen it; any problem ends in one ``LvisctlError`` line."""
    p = Path(path)
    if not p.is_file():
        raise LvisctlError(f"{p}: no such file")
    with open(p, "rb") as fh:
        head = fh.read(64).lstrip()
    if not head.startswith(b"["):
        load_results(p)  # raises the right 'not json' / 'not a list' message
        raise LvisctlError(f"{p}: results must be a json list of detections")
    try:
        with quiet_native_output():
            dets = gt.coco.load_res(str(p))
    except Exception as err:  # malformed json, NaN scores, wrong field types
        explain_and_raise(p, gt, str(err).splitlines()[0])
    num = len(dets.get_ann_ids())
    if dets.load_warnings:  # unknown image or category ids
        explain_and_raise(p, gt, "; ".join(dets.load_warnings))
    scan = scan_results_file(p)
    if screen_problems(scan, num, gt.table):
        validate_results(load_results(p), gt.table, source=p)  # raises unless the screen was over-cautious
    return LoadedResults(
        path=p,
        dets=dets,
        num_dets=num,
        has_bbox=scan.num_bbox > 0,
        has_segmentation=scan.num_segmentation > 0,
    )


@dataclass
class IouTypeMetrics:
    """The official numbers for one iou type, and AP per category (NaN where a category has no GT)."""

    metrics: dict[str, float]
    per_category_ap: dict[int, float]


def per_category_ap(precision: np.ndarray) -> np.ndarray:
    """AP of each category from lvis-api's precision array [T, R, K, A(, M)]: area 'all', -1 = absent."""
    p = np.asarray(precision, dtype=np.float64)
    p = p.reshape(p.shape[:4] + (-1,))[..., 0, -1]  # area range 'all', the (single) max-dets setting
    valid = p > -1
    counts = valid.sum(axis=(0, 1))
    sums = np.where(valid, p, 0.0).sum(axis=(0, 1))
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def run_lvis_eval(gt: LvisGroundTruth, dets: Any, iou_type: str, *, source: Path) -> IouTypeMetrics:
    """Evaluate an already capped hotcoco results dataset with lvis-api's federated protocol."""
    import hotcoco

    try:
        with quiet_native_output():
            ev = hotcoco.LVISEval(gt.coco, dets, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    except ValueError as err:  # an RLE that does not decode, met while computing IoUs
        explain_and_raise(source, gt, str(err).splitlines()[0])
    results = ev.get_results()
    metrics = {k: float(results[k]) for k in METRIC_KEYS if k in results}
    cat_ids = list(ev.params.cat_ids)
    ap = per_category_ap(ev.eval["precision"])
    return IouTypeMetrics(metrics=metrics, per_category_ap=dict(zip(cat_ids, ap.tolist(), strict=True)))


def evaluate_lvis(
    results: LoadedResults, gt: LvisGroundTruth, iou_types: Sequence[str] = IOU_TYPES
) -> dict[str, IouTypeMetrics]:
    """The official LVIS v1 metrics of ``results`` for each iou type (max 300 detections per image)."""
    if "segm" in iou_types and not results.has_segmentation and results.num_dets:
        raise LvisctlError(f"{results.path}: has no 'segmentation' fields; evaluate it with --iou-type bbox")
    with quiet_native_output():
        capped = results.dets.cap_detections_per_image(MAX_DETS_PER_IMAGE)
    return {t: run_lvis_eval(gt, capped, t, source=results.path) for t in iou_types}


def box_minus_mask_gap(by_type: dict[str, IouTypeMetrics]) -> float | None:
    """AP_bbox - AP_mask (the last column of the paper's Table 2), when both were evaluated."""
    if "segm" not in by_type or "bbox" not in by_type:
        return None
    return by_type["bbox"].metrics["AP"] - by_type["segm"].metrics["AP"]
