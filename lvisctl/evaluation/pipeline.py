"""What ``lvisctl evaluate`` does, as one layer function: resolve inputs, evaluate, write, register."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.lvis_metrics import (
    BBOX_AREA_NOTE,
    IOU_TYPES,
    IouTypeMetrics,
    LvisGroundTruth,
    box_minus_mask_gap,
    evaluate_lvis,
    load_ground_truth,
    load_results_for_eval,
)
from lvisctl.rundir import RunDir, atomic_write_json, atomic_write_text

EXTRA_METRICS = ("boundary", "fixed")


@dataclass
class EvaluationOutcome:
    """Everything ``evaluate`` computed, plus where it was written."""

    metrics: dict[str, Any]  # the --out json: {"segm": {...}, "bbox": {...}, ...}
    by_type: dict[str, IouTypeMetrics]
    extras: dict[str, dict[str, IouTypeMetrics]]
    notes: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def parse_list(value: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise LvisctlError(f"{option}: unknown value {unknown[0]!r}; expected some of {', '.join(allowed)}")
    return items


def resolve_inputs(results: Path | None, gt: Path | None, run: RunDir | None) -> tuple[Path, Path, Any]:
    """(results path, gt path, the predictions artifact or None)."""
    artifact = None
    if results is None:
        if run is None:
            raise LvisctlError("evaluate: give a RESULTS file or --run-dir with a predictions artifact")
        artifact = run.latest("predictions")
        results = run.resolve(artifact)
        if gt is None and artifact.meta.get("gt"):
            gt = Path(artifact.meta["gt"])
            if not gt.is_absolute():
                gt = run.path_of(str(gt))
    if gt is None:
        raise LvisctlError(f"{results}: no --gt given and the predictions artifact records no 'gt'")
    return Path(results), Path(gt), artifact


def output_paths(out: Path | None, results: Path, run: RunDir | None) -> tuple[Path, Path, Path] | None:
    """metrics json, per-category csv, AP-by-frequency png (None: print only)."""
    if out is None:
        if run is None:
            return None
        out = run.root / "metrics" / f"{results.stem}_metrics.json"
    elif run is not None and not out.is_absolute():
        out = run.root / out
    stem = out.with_suffix("")
    return out, Path(f"{stem}_per_category_ap.csv"), Path(f"{stem}_ap_by_frequency.png")


def per_category_csv(gt: LvisGroundTruth, by_type: dict[str, IouTypeMetrics], extras) -> str:
    columns = [(t, m) for t, m in by_type.items()]
    columns += [(f"{name}_{t}", m) for name, per in extras.items() for t, m in per.items()]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["category_id", "name", "frequency", *[f"{label}_AP" for label, _ in columns]])
    for cat_id in sorted(gt.categories):
        cat = gt.categories[cat_id]
        values = [m.per_category_ap.get(cat_id, math.nan) for _, m in columns]
        writer.writerow(
            [cat_id, cat["name"], cat["frequency"], *["" if math.isnan(v) else f"{v:.6f}" for v in values]]
        )
    return buf.getvalue()


def compute_extras(extras: Sequence[str], results: Path, gt: LvisGroundTruth, iou_types: Sequence[str]):
    """Boundary AP (segm only) and Fixed AP, which need the detections as Python objects."""
    if not extras:
        return {}
    from lvisctl.evaluation.results_io import load_results

    dets = load_results(results)
    out: dict[str, dict[str, IouTypeMetrics]] = {}
    if "boundary" in extras:
        from lvisctl.evaluation.boundary_ap import boundary_ap, gt_with_rles

        images = gt.coco.imgs
        summary, per_cat = boundary_ap(images, gt.categories, gt_with_rles(gt.coco), dets)
        out["boundary"] = {"segm": IouTypeMetrics(metrics=summary, per_category_ap=per_cat)}
    if "fixed" in extras:
        from lvisctl.evaluation.fixed_ap import fixed_ap

        out["fixed"] = fixed_ap(gt, dets, iou_types)
    return out


def run_evaluate(
    results: Path | None,
    *,
    gt: Path | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
    extras: Sequence[str] = (),
    out: Path | None = None,
    run_dir: Path | None = None,
    overwrite: bool = False,
) -> EvaluationOutcome:
    """Evaluate, then (only once everything succeeded) write and register the outputs."""
    if "boundary" in extras and "segm" not in iou_types:
        raise LvisctlError("--metrics boundary: Boundary AP is a mask metric; include segm in --iou-type")
    run = RunDir(run_dir, create=False) if run_dir is not None else None
    results, gt_path, artifact = resolve_inputs(results, gt, run)
    paths = output_paths(out, results, run)
    for p in paths or ():
        if p.exists() and not overwrite:
            raise LvisctlError(f"{p}: already exists; pass --overwrite to replace it or choose another --out")
    ground = load_ground_truth(gt_path)
    loaded = load_results_for_eval(results, ground)
    by_type = evaluate_lvis(loaded, ground, iou_types)
    extra = compute_extras(extras, results, ground, iou_types)
    notes = [BBOX_AREA_NOTE] if loaded.has_bbox and "segm" in iou_types else []
    metrics: dict[str, Any] = {t: m.metrics for t, m in by_type.items()}
    gap = box_minus_mask_gap(by_type)
    if gap is not None:
        metrics["bbox_minus_segm"] = {"AP": gap}
    for name, per in extra.items():
        metrics[name] = {t: m.metrics for t, m in per.items()}
    outcome = EvaluationOutcome(metrics=metrics, by_type=by_type, extras=extra, notes=notes)
    if paths is not None:
        _write_outputs(
            outcome, paths, ground, run, inputs=[artifact or results, gt_path], overwrite=overwrite
        )
    return outcome


def _write_outputs(outcome, paths, ground, run: RunDir | None, *, inputs, overwrite: bool) -> None:
    from lvisctl.evaluation.plots import plot_ap_by_frequency

    json_path, csv_path, png_path = paths
    if run is not None:
        for p in paths:
            run.output_path(run.relative(p), overwrite=overwrite)
    atomic_write_json(json_path, outcome.metrics)
    atomic_write_text(csv_path, per_category_csv(ground, outcome.by_type, outcome.extras))
    plot_ap_by_frequency({t: m.metrics for t, m in outcome.by_type.items()}, png_path)
    outcome.written = [json_path, csv_path, png_path]
    if run is None:
        return
    meta = {"iou_types": list(outcome.by_type), "gt": str(inputs[1])}
    # The summary json is registered last so run.latest("metrics") finds it.
    run.register("metrics", csv_path, inputs=inputs, meta={**meta, "table": "per_category_ap"})
    run.register("plot", png_path, inputs=inputs, meta={**meta, "plot": "ap_by_frequency"})
    run.register("metrics", json_path, inputs=inputs, meta=meta)
