"""Official LVIS v1 federated metrics (Gupta et al. 2019), computed by hotcoco's Rust port of lvis-api.

hotcoco 1.3 reproduces lvis-api 0.5.3 number for number (checked in tests against the real lvis-api)
and is ~20x faster; this module adds what a user needs around it: the results file is parsed in Rust,
validated by :func:`~lvisctl.evaluation.validate.validate` (which catches what hotcoco silently accepts),
capped at 300 detections per image exactly as ``LVISResults`` does, and the per-category APs come back
with the summary. ``evaluate`` takes this route for the extra metrics (they stream over hotcoco's
dataset) and for files the strict reader of ``fast_eval`` does not vouch for; the GT loader serves both.

Detections and GT annotations of area 0 are not scored, as in lvis-api: ``LVISEval._prepare`` asks
``get_ann_ids``, which keeps ``area > 0`` only, after ``LVISResults`` has applied the 300 cap (so an empty
mask still takes its slot under the cap). A result's area is its box area when the file's detections carry
``bbox``, else its mask area. hotcoco keeps them (a false positive each); :func:`drop_zero_area` removes them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.native_output import quiet_native_output
from lvisctl.evaluation.results_io import MAX_DETS_PER_IMAGE, ImageTable, first_detection_keys, load_results
from lvisctl.evaluation.validate import validate

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
    "tta-infer's <stem>.segm.json has no 'bbox' and gets mask areas"
)


# hotcoco's area ranges are inclusive at both ends: [smallest positive double, inf] is lvis-api's area > 0.
POSITIVE_AREA = [float(np.nextafter(0.0, 1.0)), math.inf]


def drop_zero_area(coco: Any) -> tuple[Any, int]:
    """``coco`` (a hotcoco dataset of results) without its detections of area 0, and how many went.

    lvis-api evaluates only ``area > 0`` (``get_ann_ids`` in ``LVISEval._prepare``); the dataset is rebuilt
    only when there is something to drop, so the common case costs one id query.
    """
    dropped = len(coco.get_ann_ids(area_rng=[-math.inf, 0.0]))
    if not dropped:
        return coco, 0
    with quiet_native_output():
        return coco.filter(area_rng=POSITIVE_AREA, drop_empty_images=False), dropped


def _drop_zero_area_gt(coco: Any) -> Any:
    """The GT without its annotations of area 0 (rare: rebuilt only then). Not ``filter``: that would also
    drop the categories without annotations, which results may still name (federated negatives)."""
    zero = set(coco.get_ann_ids(area_rng=[-math.inf, 0.0]))
    if not zero:
        return coco
    data = coco.dataset  # a copy
    data["annotations"] = [a for a in data["annotations"] if a["id"] not in zero]
    coco.dataset = data  # the setter re-indexes
    return coco


def zero_area_note(path: Path, dropped: int) -> str:
    return (
        f"note: {path}: {dropped} detection(s) of area 0 (empty masks or zero-area boxes) not scored, "
        "as lvis-api (it evaluates area > 0 only)"
    )


@dataclass
class LvisGroundTruth:
    """A loaded LVIS annotation file: the hotcoco dataset plus what validation and reports need."""

    coco: Any
    table: ImageTable
    categories: dict[int, dict[str, Any]]  # id -> {"name", "frequency"}
    version: str = "v1"  # "v0.5" or "v1" (:func:`lvis_version`)


def lvis_version(num_categories: int, first_file_name: str) -> str:
    """LVIS v0.5 has 1230 categories and COCO-2014 file names (``COCO_val2014_...jpg``); v1 has 1203
    and ``coco_url`` only. The one home of this rule: only ``evaluate`` asks (for the metrics json's
    ``scored.lvis_version``); the data layer finds v0.5 image files by their names (``data/formats``)
    without naming the version."""
    if num_categories == 1230 or re.match(r"^COCO_[a-z]+2014_", first_file_name):
        return "v0.5"
    return "v1"


def load_ground_truth(path: str | os.PathLike[str]) -> LvisGroundTruth:
    """Load an LVIS v1 annotation file (json parsed by hotcoco) and check it is a federated LVIS file."""
    import hotcoco

    p = Path(path)
    if not p.is_file():
        raise LvisctlError(f"{p}: {'is a folder, not an annotation file' if p.is_dir() else 'no such file'}")
    try:
        with quiet_native_output():
            coco = hotcoco.COCO(str(p))
    except Exception as err:  # hotcoco raises ValueError/OSError/RuntimeError on malformed files
        raise LvisctlError(f"{p}: not a readable LVIS annotation file ({str(err).splitlines()[0]})") from None
    imgs, cats = coco.imgs, coco.cats
    if not imgs or not cats:
        raise LvisctlError(f"{p}: has no images or no categories")
    if not coco.get_ann_ids():  # not coco.anns: that builds a Python dict per annotation (0.2 s at 5k images)
        raise LvisctlError(
            f"{p}: has no annotations (an image-info file?); evaluate against the split's annotation file"
        )
    bad_freq = [c for c, rec in cats.items() if rec.get("frequency") not in ("r", "c", "f")]
    if len(bad_freq) == len(cats) and not any("frequency" in rec for rec in cats.values()):
        raise LvisctlError(
            f"{p}: this is a COCO file (no LVIS frequencies); convert it with "
            f"`lvisctl data convert --from coco {p} OUT.json`"
        )
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
    first_name = str(next(iter(imgs.values())).get("file_name") or "")
    version = lvis_version(len(cats), first_name)
    coco = _drop_zero_area_gt(coco)  # GT of area 0 is neither a positive nor a match target in lvis-api
    return LvisGroundTruth(coco=coco, table=table, categories=categories, version=version)


@dataclass
class LoadedResults:
    """A results file parsed by hotcoco, not yet trusted (see :meth:`verify`)."""

    path: Path
    dets: Any  # hotcoco dataset of all detections in the file
    num_dets: int
    has_bbox: bool
    has_segmentation: bool
    gt: LvisGroundTruth
    verified: bool = False
    notes: list[str] = field(default_factory=list)

    def verify(self) -> None:
        """:func:`~lvisctl.evaluation.validate.validate` the file (one error line); nothing is reported or
        written before it passes."""
        if self.verified:
            return
        validate(self.path, self.gt)
        self.verified = True


def explain_and_raise(path: Path, gt: LvisGroundTruth, fallback: str) -> None:
    """Validate the file exactly and raise the precise problem list; ``fallback`` if it finds none."""
    validate(path, gt)
    raise LvisctlError(f"{path}: {fallback}")


def load_results_for_eval(path: str | os.PathLike[str], gt: LvisGroundTruth) -> LoadedResults:
    """Parse ``path`` with hotcoco. Call :meth:`LoadedResults.verify` before trusting the numbers
    (``evaluate_lvis`` does)."""
    p = Path(path)
    if not p.is_file():
        raise LvisctlError(f"{p}: no such file")
    is_list, has_bbox, has_seg = first_detection_keys(p)
    if not is_list:
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
    return LoadedResults(path=p, dets=dets, num_dets=num, has_bbox=has_bbox, has_segmentation=has_seg, gt=gt)


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
    """The official LVIS v1 metrics of ``results`` for each iou type (max 300 detections per image).

    The file is verified (``results.verify()``) after hotcoco has evaluated it and before any number is
    returned.
    """
    if "segm" in iou_types and not results.has_segmentation and results.num_dets:
        results.verify()  # a file with segmentation on some detections only gets its own message
        raise LvisctlError(f"{results.path}: has no 'segmentation' fields; evaluate it with --iou-type bbox")
    with quiet_native_output():
        capped = results.dets.cap_detections_per_image(MAX_DETS_PER_IMAGE)
    capped, dropped = drop_zero_area(capped)  # after the cap, as lvis-api
    if dropped and not any(n.startswith(f"note: {results.path}: ") for n in results.notes):
        results.notes.append(zero_area_note(results.path, dropped))
    out = {t: run_lvis_eval(gt, capped, t, source=results.path) for t in iou_types}
    results.verify()
    return out


def box_minus_mask_gap(by_type: dict[str, IouTypeMetrics]) -> float | None:
    """AP_bbox - AP_mask (the last column of the paper's Table 2), when both were evaluated."""
    if "segm" not in by_type or "bbox" not in by_type:
        return None
    box, mask = by_type["bbox"].metrics["AP"], by_type["segm"].metrics["AP"]
    if box < 0 or mask < 0:  # lvis-api's -1: undefined (no ground truth)
        return None
    return box - mask
