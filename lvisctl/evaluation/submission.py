"""The LVIS v1 test-dev submission: a validated results list for the evaluation server (EvalAI).

The server scores the same LVIS results format ``evaluate`` reads: a json list of
``{"image_id", "category_id", "bbox", "score", "segmentation": compressed RLE}``, at most 300 per image,
for the images of ``lvis_v1_image_info_test_dev.json``. A ``.zip`` output holds that json as its single
member (the upload is ~1 GB of json for 19.8k images; the archive is what people upload).
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError
from lvisctl.evaluation.federated_eval import cap_per_image
from lvisctl.evaluation.results_io import MAX_DETS_PER_IMAGE, ImageTable, load_results
from lvisctl.evaluation.validate import validate
from lvisctl.rundir.io import atomic_output, atomic_write_json, read_json

LVIS_V1_NUM_CATEGORIES = 1203  # LVIS v1 category ids are exactly 1..1203


@dataclass(frozen=True)
class ImageInfo:
    table: ImageTable
    frequency: dict[int, str]  # category id -> r/c/f, when the file lists categories


def load_image_info(path: str | os.PathLike[str]) -> ImageInfo:
    """An LVIS image-info file (test-dev: images and categories, no annotations) or a full GT file."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not data["images"]:
        raise LvisctlError(f"{path}: not an LVIS image-info file (no 'images' list)")
    sizes = {}
    for img in data["images"]:
        try:
            sizes[int(img["id"])] = (int(img["height"]), int(img["width"]))
        except (KeyError, TypeError, ValueError):
            raise LvisctlError(
                f"{path}: image record without integer id/height/width: {str(img)[:80]}"
            ) from None
    cats = data.get("categories") or []
    cat_ids = frozenset(int(c["id"]) for c in cats) or frozenset(range(1, LVIS_V1_NUM_CATEGORIES + 1))
    frequency = {int(c["id"]): str(c.get("frequency", "?")) for c in cats}
    return ImageInfo(ImageTable(sizes=sizes, cat_ids=cat_ids, path=str(path)), frequency)


@dataclass
class SubmissionSummary:
    images: int
    images_covered: int
    detections: int
    truncated: int
    per_frequency: dict[str, int]
    out: Path


def truncate_per_image(results: Sequence[Mapping[str, Any]], max_dets: int = MAX_DETS_PER_IMAGE) -> list:
    """The ``max_dets`` highest-scoring detections of each image (lvis-api's rule: stable on ties)."""
    return cap_per_image(results, max_dets)


OUT_SUFFIXES = (".json", ".zip")  # what write_submission writes, by the name's suffix


def check_out_suffix(out: Path) -> None:
    """The file written is what its name says: plain json for ``.json``, a zip for ``.zip``; any other
    name (``sub.tar``, ``sub.gz``) would hold plain json under an archive's name: refused."""
    if Path(out).suffix.lower() not in OUT_SUFFIXES:
        raise LvisctlError(
            f"--out {out}: the submission is written as .json or as a .zip holding it; name it "
            f"{Path(out).stem}.json or {Path(out).stem}.zip"
        )


def coverage_warning(summary: SubmissionSummary) -> str | None:
    """A line when the results leave images of the image-info file without any detection."""
    missing = summary.images - summary.images_covered
    if missing <= 0:
        return None
    return (
        f"warning: the results cover {summary.images_covered} of {summary.images} images; the server scores "
        f"the other {missing} as having no detections (results of a subset or another split?)"
    )


def write_submission(results: Sequence[Mapping[str, Any]], out: str | os.PathLike[str]) -> Path:
    """Compact json, or a zip holding it as ``<stem>.json`` when ``out`` ends in ``.zip``."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        return atomic_write_json(out, list(results), indent=None)
    import json

    payload = json.dumps(list(results), separators=(",", ":")).encode()
    with atomic_output(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{out.stem}.json", payload)
    return out


def build_submission(
    results_path: str | os.PathLike[str],
    image_info_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    truncate: bool = False,
) -> SubmissionSummary:
    """Validate ``results_path`` against the image-info file and write the server file to ``out``."""
    info = load_image_info(image_info_path)
    results = load_results(results_path)
    before = len(results)
    if truncate:
        results = truncate_per_image(results)
    validate(results, info.table, source=results_path, for_submission=True)
    write_submission(results, out)
    per_freq = Counter(info.frequency.get(d["category_id"], "?") for d in results)
    return SubmissionSummary(
        images=len(info.table.sizes),
        images_covered=len({d["image_id"] for d in results}),
        detections=len(results),
        truncated=before - len(results),
        per_frequency={k: per_freq.get(k, 0) for k in ("r", "c", "f")}
        | ({"?": per_freq["?"]} if per_freq.get("?") else {}),
        out=Path(out),
    )


def latest_segm_predictions(run: Any, image_info: Path) -> Any:
    """The newest segm predictions (tta-infer's ``<stem>.segm.json``; without any, a combined file
    registered by hand) made on ``image_info`` (the one rule of :mod:`lvisctl.rundir.defaults`), printed.
    Pseudo-labelling's internal predictions are never picked."""
    from lvisctl.evaluation.pipeline import evaluation_predictions, latest_predictions
    from lvisctl.rundir.defaults import announce, default_predictions

    segm = evaluation_predictions(run, iou_type="segm")
    candidates = segm if segm else [latest_predictions(run)]
    return announce(default_predictions(run, image_info, candidates), "predictions").artifact


def run_submit(
    results: Path | None,
    image_info: Path,
    out: Path | None,
    *,
    truncate: bool = False,
    run_dir: Path | None = None,
    overwrite: bool = False,
) -> SubmissionSummary:
    """``lvisctl submit``: resolve inputs (newest segm predictions in the run dir), build, register."""
    from lvisctl.rundir import RunDir

    run = RunDir(run_dir, create=False) if run_dir is not None else None
    artifact = None
    if results is None:
        if run is None:
            raise LvisctlError("submit: give a RESULTS file or --run-dir with a predictions artifact")
        artifact = latest_segm_predictions(run, image_info)
        results = run.resolve(artifact)
    if out is None:
        if run is None:
            raise LvisctlError("submit: give --out (or --run-dir to write submission/<results>.zip)")
        stem = artifact.meta.get("group") if artifact is not None else None
        out = run.root / "submission" / f"{stem or Path(results).stem}_test-dev.zip"
    elif run is not None and not out.is_absolute():
        out = run.root / out
    check_out_suffix(out)
    from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs

    refuse_inputs_as_outputs([out], [results, image_info])
    with output_lock([out]):
        if out.exists() and not overwrite:
            raise LvisctlError(
                f"{out}: already exists; pass --overwrite to replace it or choose another --out"
            )
        summary = build_submission(results, image_info, out, truncate=truncate)
    if run is not None:
        run.register(
            "submission",
            out,
            inputs=[artifact or results, image_info],
            meta={
                "image_info": str(image_info),
                "detections": summary.detections,
                "truncated": summary.truncated,
            },
        )
    return summary
