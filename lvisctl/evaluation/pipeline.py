"""What ``lvisctl evaluate`` does, as one layer function: resolve inputs, evaluate, write, register."""

from __future__ import annotations

import csv
import gc
import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.fast_eval import fast_evaluate
from lvisctl.evaluation.lvis_metrics import (
    BBOX_AREA_NOTE,
    IOU_TYPES,
    METRIC_KEYS,
    IouTypeMetrics,
    LoadedResults,
    LvisGroundTruth,
    box_minus_mask_gap,
    evaluate_lvis,
    load_ground_truth,
    load_results_for_eval,
    zero_area_note,
)
from lvisctl.evaluation.provenance import check_gt_unchanged
from lvisctl.rundir import Artifact, RunDir, atomic_group, atomic_write_json, atomic_write_text
from lvisctl.rundir.io import sha256_file
from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs

EXTRA_METRICS = ("boundary", "fixed")
# Predictions registered with this meta purpose are some command's internal working files (pseudo-labelling's
# train-set predictions), never what ``evaluate`` or ``submit`` pick from a run dir.
INTERNAL_PURPOSES = frozenset({"pseudolabel"})


def evaluation_predictions(run: RunDir, **meta: Any) -> list[Artifact]:
    """The run's predictions artifacts matching ``meta`` that are meant to be scored, oldest first."""
    return [a for a in run.find("predictions", **meta) if a.meta.get("purpose") not in INTERNAL_PURPOSES]


def latest_predictions(run: RunDir, **meta: Any) -> Artifact:
    """The newest scorable predictions artifact (see :func:`evaluation_predictions`); one line if none."""
    found = evaluation_predictions(run, **meta)
    if not found:
        what = f" with {meta}" if meta else ""
        internal = " (only pseudo-labelling's internal ones)" if run.find("predictions", **meta) else ""
        raise LvisctlError(
            f"{run.manifest_path}: no predictions{what} to evaluate recorded{internal}; "
            "run tta-infer (or pass a RESULTS file) first"
        )
    return found[-1]


@dataclass
class EvaluationOutcome:
    """Everything ``evaluate`` computed, plus where it was written."""

    metrics: dict[str, Any]  # the --out json: {"segm": {...}, "bbox": {...}, ...}
    by_type: dict[str, IouTypeMetrics]
    extras: dict[str, dict[str, IouTypeMetrics]]
    notes: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    categories: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {"name", "frequency"}


def parse_list(value: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise LvisctlError(f"{option}: unknown value {unknown[0]!r}; expected some of {', '.join(allowed)}")
    return items


@dataclass
class EvalSource:
    """One results file and the iou types evaluated on it (tta-infer writes one file per iou type)."""

    path: Path
    iou_types: tuple[str, ...]
    artifact: Any = None  # the predictions artifact, when it came from the run dir


def resolve_inputs(
    results: Path | None,
    gt: Path | None,
    run: RunDir | None,
    iou_types: Sequence[str] = IOU_TYPES,
    predictions: Sequence[Artifact] | None = None,
) -> tuple[list[EvalSource], Path, str]:
    """(results files with their iou types, gt path, output stem).

    A RESULTS file is evaluated for every iou type, except that ``X.segm.json`` hands bbox to the
    ``X.bbox.json`` next to it (tta-infer's pair: the model's boxes, not boxes derived from the masks);
    without ``--gt`` the gt recorded for a registered file is taken. From a run dir: segm on the newest
    segm predictions and bbox on the bbox file of the same tta-infer group, so segm uses mask areas and
    bbox the model's boxes; a predictions artifact without ``iou_type`` (a combined file) serves every
    iou type.
    """
    if results is not None:
        results = Path(results)
        gt = Path(gt) if gt is not None else registered_gt(results)
        return results_file_sources(results, iou_types), gt, results.stem
    if run is None:
        raise LvisctlError("evaluate: give a RESULTS file or --run-dir with a predictions artifact")
    newest = predictions[0] if predictions else latest_predictions(run)
    if predictions:  # chosen by the caller (e.g. the demo evaluating each training phase)
        by_type = {a.meta.get("iou_type"): a for a in predictions}
        arts = {t: by_type.get(t, by_type.get(None, newest)) for t in iou_types}
    elif "iou_type" not in newest.meta:
        arts = {t: newest for t in iou_types}
    else:
        arts = {}
        group = None
        if "segm" in iou_types:
            arts["segm"] = latest_predictions(run, iou_type="segm")
            group = arts["segm"].meta.get("group")
        if "bbox" in iou_types:
            same = {"group": group} if group is not None else {}
            arts["bbox"] = latest_predictions(run, iou_type="bbox", **same)
    sources: list[EvalSource] = []
    for t, art in arts.items():
        known = next((s for s in sources if s.artifact is art), None)
        if known is not None:
            known.iou_types += (t,)
        else:
            # Verified against the manifest's sha256 by the screen, which reads the file anyway.
            sources.append(EvalSource(run.resolve(art, verify=False), (t,), art))
    first = sources[0].artifact
    if gt is None:
        if not first.meta.get("gt"):
            raise LvisctlError(
                f"{sources[0].path}: no --gt given and the predictions artifact records no 'gt'"
            )
        gt = Path(first.meta["gt"])
        if not gt.is_absolute():
            gt = run.path_of(str(gt))
    check_gt_unchanged(Path(gt), [s.artifact for s in sources], run)  # edited in place since predicted?
    stem = str(first.meta.get("group") or sources[0].path.stem)
    return sources, Path(gt), stem


def paired_bbox_file(path: Path) -> Path | None:
    """``X.bbox.json`` beside ``X.segm.json`` (tta-infer's and ensemble's pair), if it exists."""
    name = path.name
    if not name.endswith(".segm.json"):
        return None
    pair = path.with_name(name[: -len(".segm.json")] + ".bbox.json")
    return pair if pair.is_file() else None


def results_file_sources(path: Path, iou_types: Sequence[str]) -> list[EvalSource]:
    """The sources of a RESULTS file: bbox on its paired box file when there is one, else on itself."""
    pair = paired_bbox_file(path) if "bbox" in iou_types else None
    if pair is None:
        return [EvalSource(path, tuple(iou_types))]
    segm = tuple(t for t in iou_types if t != "bbox")
    return [EvalSource(path, segm), EvalSource(pair, ("bbox",))] if segm else [EvalSource(pair, ("bbox",))]


def registered_gt(path: Path) -> Path:
    """The gt recorded for ``path`` in the manifest of the run directory holding it; one line if none."""
    from lvisctl.rundir.manifest import MANIFEST_NAME

    for root in Path(path).resolve().parents:
        if (root / MANIFEST_NAME).is_file():
            run = RunDir(root, create=False)
            art = run.get(run.relative(path))
            if art is not None and art.meta.get("gt"):
                gt = Path(art.meta["gt"])
                return gt if gt.is_absolute() else run.path_of(str(gt))
            break
    raise LvisctlError(
        f"{path}: no --gt given, and the file is not registered with a 'gt' in a run directory's manifest"
    )


SCORED_KEY = "scored"  # the metrics json's record of what was scored (not a metric)
# Where the box AP's boxes came from (``scored.results.bbox.boxes``): the results' own boxes (a bbox file,
# or a file whose detections carry ``bbox``), or boxes hotcoco derived from the masks (a segm-only file).
BOXES_FROM_MODEL, BOXES_FROM_MASKS = "model", "masks"
MASK_BOXES_NOTE = (
    "note: box AP comes from boxes derived from the masks ({path} has no 'bbox' and no .bbox.json beside "
    "it): not the model's boxes; the box-minus-mask gap is left out"
)


def scored_record(sources: Sequence[EvalSource], gt: Path, box_sources: Sequence[str] = ()) -> dict[str, Any]:
    """Which file each iou type was scored on, and against which GT (absolute paths; the manifest's
    sha256 too when the file came from a run dir), so a metrics json always says what it measured.
    ``box_sources`` (per source): where its boxes came from, recorded under bbox as ``boxes``."""
    results: dict[str, dict[str, str]] = {}
    for k, source in enumerate(sources):
        entry = {"path": str(source.path.resolve())}
        if source.artifact is not None:
            entry["sha256"] = source.artifact.sha256
        for t in source.iou_types:
            results[t] = dict(entry)
            if t == "bbox" and k < len(box_sources):
                results[t]["boxes"] = box_sources[k]
    return {"results": results, "gt": str(Path(gt).resolve()), "gt_sha256": sha256_file(gt)}


def scored_lines(scored: dict[str, Any]) -> list[str]:
    """``scored segm: <file>`` lines (files shared by several iou types once), then ``against gt: <file>``."""
    by_path: dict[str, list[str]] = {}
    for t, entry in scored["results"].items():
        by_path.setdefault(entry["path"], []).append(t)
    lines = [f"scored {'+'.join(types)}: {path}" for path, types in by_path.items()]
    return [*lines, f"against gt: {scored['gt']}"]


def output_paths(out: Path | None, stem: str, run: RunDir | None) -> tuple[Path, Path, Path] | None:
    """metrics json, per-category csv, AP-by-frequency png (None: print only)."""
    if out is None:
        if run is None:
            return None
        out = run.root / "metrics" / f"{stem}_metrics.json"
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


def compute_extras(
    extras: Sequence[str], source: EvalSource, gt: LvisGroundTruth, loaded: LoadedResults | None = None
):
    """Boundary AP (segm only) and Fixed AP of one results file, streamed image by image over the
    hotcoco dataset ``evaluate`` already parsed (``loaded``; parsed here when not given)."""
    wanted = [e for e in extras if e != "boundary" or "segm" in source.iou_types]
    if not wanted:
        return {}
    if loaded is None:
        loaded = load_results_for_eval(source.path, gt)
        loaded.verify()
    from lvisctl.evaluation.fixed_ap import fixed_metrics, fixed_tasks
    from lvisctl.evaluation.streaming_eval import Task, stream_federated

    # One pass over the images serves both metrics.
    tasks = [Task("boundary")] if "boundary" in wanted else []
    fixed_types = tuple(source.iou_types) if "fixed" in wanted else ()
    tasks += fixed_tasks(fixed_types)
    results = stream_federated(gt, loaded.dets, tasks)
    out: dict[str, dict[str, IouTypeMetrics]] = {}
    if "boundary" in wanted:
        summary, per_cat = results.pop(0)
        out["boundary"] = {"segm": IouTypeMetrics(metrics=summary, per_category_ap=per_cat)}
    if fixed_types:
        out["fixed"] = {t: fixed_metrics(*r) for t, r in zip(fixed_types, results, strict=True)}
    return out


def _check_digest(source: EvalSource, digest: str, run: RunDir | None) -> None:
    """The run dir's integrity check of a results file (``digest``: its sha256 computed while reading)."""
    if source.artifact is None or run is None:
        return
    digest = digest or sha256_file(source.path)
    if digest != source.artifact.sha256:
        raise LvisctlError(
            f"{source.path}: sha256 no longer matches {run.manifest_path.name} "
            "(the file changed after it was recorded)"
        )


@dataclass
class ScoredSource:
    """One results file's metrics per iou type, and what the report says about it."""

    by_type: dict[str, IouTypeMetrics]
    has_bbox: bool
    notes: list[str]
    loaded: LoadedResults | None = None  # the hotcoco route's parsed file (the extra metrics read it)


def _score_source(
    source: EvalSource, ground: LvisGroundTruth, run: RunDir | None, extras: Sequence[str]
) -> ScoredSource:
    """The official metrics of one results file: in one strict parse on every core (``fast_eval``), or,
    for a file that reader does not vouch for (and for the extra metrics, which stream over hotcoco's
    dataset), hotcoco, then ``validate`` (the same reader, else the exact check, which names the problem)."""
    if not extras:
        fast = fast_evaluate(source.path, ground, source.iou_types, sha256=source.artifact is not None)
        if fast is not None:
            _check_digest(source, fast.sha256, run)
            by_type = {
                t: IouTypeMetrics(metrics={k: summary[k] for k in METRIC_KEYS}, per_category_ap=per_cat)
                for t, (summary, per_cat) in fast.metrics.items()
            }
            notes = [zero_area_note(source.path, fast.zero_area)] if fast.zero_area else []
            return ScoredSource(by_type, fast.has_bbox, notes)
    loaded = load_results_for_eval(source.path, ground)
    by_type = evaluate_lvis(loaded, ground, source.iou_types)
    _check_digest(source, "", run)
    return ScoredSource(by_type, loaded.has_bbox, loaded.notes, loaded)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for one ``evaluate``, until its objects are gone.

    The GT's Python objects (hotcoco's dataset: a dict per image and annotation, a list per polygon) are
    acyclic and freed by reference counting, but building them set off collections that walked every
    live object again and again: 7-14% of a box evaluation's CPU time at 5,000 images (perf, 2026-12-08).
    Re-enabled only after the evaluation's locals are released, so the first collection after it does not
    walk them either."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_evaluate(
    results: Path | None,
    *,
    gt: Path | None = None,
    iou_types: Sequence[str] = IOU_TYPES,
    extras: Sequence[str] = (),
    out: Path | None = None,
    run_dir: Path | None = None,
    overwrite: bool = False,
    predictions: Sequence[Artifact] | None = None,
) -> EvaluationOutcome:
    """Evaluate, then (only once everything succeeded) write and register the outputs."""
    with gc_paused():
        return _run_evaluate(results, gt, iou_types, extras, (out, run_dir, overwrite, predictions))


def _run_evaluate(results, gt, iou_types, extras, options) -> EvaluationOutcome:
    out, run_dir, overwrite, predictions = options
    if "boundary" in extras and "segm" not in iou_types:
        raise LvisctlError("--metrics boundary: Boundary AP is a mask metric; include segm in --iou-type")
    run = RunDir(run_dir, create=False) if run_dir is not None else None
    sources, gt_path, stem = resolve_inputs(results, gt, run, iou_types, predictions)
    paths = output_paths(out, stem, run)
    refuse_inputs_as_outputs(paths or (), [*(s.path for s in sources), gt_path])
    _refuse_existing(paths or (), overwrite)
    for source in sources:
        if not source.path.is_file():
            what = "is a folder, not a results file" if source.path.is_dir() else "no such file"
            raise LvisctlError(f"{source.path}: {what}")
    ground = load_ground_truth(gt_path)
    scored = [_score_source(source, ground, run, extras) for source in sources]
    by_type: dict[str, IouTypeMetrics] = {}
    for result in scored:
        by_type.update(result.by_type)
    by_type = {t: by_type[t] for t in iou_types}
    extra: dict[str, dict[str, IouTypeMetrics]] = {}
    for source, result in zip(sources, scored, strict=True):
        if result.loaded is not None:
            for name, per in compute_extras(extras, source, ground, result.loaded).items():
                extra.setdefault(name, {}).update(per)
    notes = [
        BBOX_AREA_NOTE for s, r in zip(sources, scored, strict=True) if r.has_bbox and "segm" in s.iou_types
    ]
    notes += [note for r in scored for note in r.notes]
    boxes = [BOXES_FROM_MODEL if r.has_bbox else BOXES_FROM_MASKS for r in scored]
    mask_boxes = [
        s.path for s, b in zip(sources, boxes, strict=True) if "bbox" in s.iou_types and b != "model"
    ]
    notes += [MASK_BOXES_NOTE.format(path=p) for p in mask_boxes]
    metrics: dict[str, Any] = {t: m.metrics for t, m in by_type.items()}
    gap = box_minus_mask_gap(by_type)
    if gap is not None and not mask_boxes:  # the paper's gap is between the model's boxes and masks
        metrics["bbox_minus_segm"] = {"AP": gap}
    for name, per in extra.items():
        metrics[name] = {t: m.metrics for t, m in per.items()}
    metrics[SCORED_KEY] = {**scored_record(sources, gt_path, boxes), "lvis_version": ground.version}
    outcome = EvaluationOutcome(
        metrics=metrics, by_type=by_type, extras=extra, notes=notes, categories=ground.categories
    )
    if paths is not None:
        inputs = [s.artifact or s.path for s in sources] + [gt_path]
        _write_outputs(outcome, paths, ground, run, inputs=inputs, overwrite=overwrite)
    return outcome


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    for p in paths:
        if p.exists() and not overwrite:
            raise LvisctlError(f"{p}: already exists; pass --overwrite to replace it or choose another --out")


def _write_outputs(outcome, paths, ground, run: RunDir | None, *, inputs, overwrite: bool) -> None:
    from lvisctl.evaluation.plots import plot_ap_by_frequency

    json_path, csv_path, png_path = paths
    with output_lock(paths):  # a second evaluate of the same --out stops; checked again under the lock
        _refuse_existing(paths, overwrite)
        if run is not None:
            for p in paths:
                run.output_path(run.relative(p), overwrite=overwrite)
        with atomic_group():  # the json, csv and png appear together or not at all (a full disk)
            atomic_write_json(json_path, outcome.metrics)
            atomic_write_text(csv_path, per_category_csv(ground, outcome.by_type, outcome.extras))
            plot_ap_by_frequency({t: m.metrics for t, m in outcome.by_type.items()}, png_path)
    outcome.written = [json_path, csv_path, png_path]
    if run is None:
        return
    meta = {"iou_types": list(outcome.by_type), "gt": str(inputs[-1])}
    # The summary json is registered last so run.latest("metrics") finds it.
    run.register("metrics", csv_path, inputs=inputs, meta={**meta, "table": "per_category_ap"})
    run.register("plot", png_path, inputs=inputs, meta={**meta, "plot": "ap_by_frequency"})
    run.register("metrics", json_path, inputs=inputs, meta=meta)
