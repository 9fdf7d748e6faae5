"""Self-training inputs of stage-1 training (paper section 2.1, "Self-training"; Table 2 "ST").

The pseudo-label files ``lvisctl pseudolabel`` writes (LVIS-format json, kind ``pseudo-labels``) enter
training in two ways:

* ``data.pseudo_labels`` (``--mode missing``): confident detections on LVIS train that overlap no ground
  truth, read as *missing annotations* of the federated dataset. They become each image's
  ``target["ignore_boxes"]`` (XYXY); the box head does not sample background proposals that overlap them
  (``model.roi_heads.ignore_iou``). Only ``bbox`` is read.
* ``data.extra_images`` (``--mode unlabeled``): pseudo labels (boxes, RLE masks) of extra unlabeled
  images (Open Images in the paper), trained jointly with LVIS: ``data.extra_per_epoch`` of them per epoch
  with loss weight ``data.extra_loss_weight`` (lambda). See ``build_train_data`` in
  :mod:`lvisctl.data.dataset` and :class:`~lvisctl.data.samplers.ExtraImagesSampler`.

Each key is a path or ``latest``: the newest ``pseudo-labels`` artifact of that mode in the run directory;
the training run prints what each file holds, and ``SelfTrainingData.resolved_config`` gives the config to
save with ``latest`` replaced by the files used.
The files are read with ``json`` rather than :func:`~lvisctl.data.lvis.load_lvis`: missing-mode
annotations have no ``segmentation``, and their categories need not carry LVIS frequencies.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvisctl.config.frozen import to_plain
from lvisctl.data.lvis import LvisData
from lvisctl.errors import LvisctlError, raise_problems
from lvisctl.rundir import Artifact, RunDir

MAX_LISTED_PROBLEMS = 5
LATEST = "latest"
# data.<key> -> the `lvisctl pseudolabel --mode` that makes its file
CONFIG_MODES = {"pseudo_labels": "missing", "extra_images": "unlabeled"}


@dataclass
class SelfTrainingData:
    """What self-training adds to the training data; empty when neither key is set."""

    ignore_boxes: dict[int, list[list[float]]] | None = None  # XYXY per LVIS image id
    extra_data: LvisData | None = None  # the pseudo-labelled extra images
    inputs: list[Artifact | Path] = field(default_factory=list)  # manifest lineage of the checkpoints
    files: dict[str, Path] = field(default_factory=dict)  # data.<key> -> the resolved file
    resolved: dict[str, str] = field(default_factory=dict)  # data.<key> given as `latest` -> its file

    def resolved_config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the full config ``cfg`` with ``latest`` replaced by the files used (what to save)."""
        out = to_plain(cfg)
        out.setdefault("data", {}).update(self.resolved)
        return out

    def summary_lines(self) -> list[str]:
        """What the training run uses, one line per file (printed at the start of training)."""
        lines = []
        if self.ignore_boxes is not None:
            boxes = sum(len(b) for b in self.ignore_boxes.values())
            lines.append(
                f"self-training: data.pseudo_labels = {self.files['pseudo_labels']}: {boxes} ignore boxes "
                f"on {len(self.ignore_boxes)} training images"
            )
        if self.extra_data is not None:
            anns = self.extra_data.num_annotations
            lines.append(
                f"self-training: data.extra_images = {self.files['extra_images']}: "
                f"{len(self.extra_data.images)} extra images with {anns} pseudo labels "
                f"(images under {self.extra_data.image_root})"
            )
        return lines


def load_self_training(
    data_cfg: Mapping[str, Any],
    run: RunDir,
    *,
    train_image_ids: Collection[int],
    train_annotations: Path | None = None,
) -> SelfTrainingData:
    """Resolve and load ``data.pseudo_labels`` and ``data.extra_images`` (``data.extra_image_root``).

    ``SelfTrainingData.resolved`` maps each key given as ``latest`` to the file it resolved to: the trainer
    writes these into the config it saves (so the run records files, not ``latest``; ``data_cfg`` itself
    is left alone, a caller may reuse it for another run). Rank 0 prints :meth:`summary_lines`.
    ``train_annotations``: the training json, which missing-annotation labels must have been made on.
    """
    out = SelfTrainingData()
    missing = resolve_pseudo_labels(run, data_cfg, "pseudo_labels")
    if missing is not None:
        out.files["pseudo_labels"] = _path(run, missing).resolve()
        out.ignore_boxes = load_missing_annotations(
            out.files["pseudo_labels"], train_image_ids=train_image_ids, train_annotations=train_annotations
        )
        out.inputs.append(missing)
    extra = resolve_pseudo_labels(run, data_cfg, "extra_images")
    if extra is not None:
        root = str(data_cfg.get("extra_image_root", "") or "")
        image_root = Path(root).expanduser() if root else default_extra_image_root(run, extra)
        out.files["extra_images"] = _path(run, extra).resolve()
        out.extra_data = load_extra_images(out.files["extra_images"], image_root=image_root)
        out.inputs.append(extra)
    out.resolved = {k: str(p) for k, p in out.files.items() if str(data_cfg.get(k)) == LATEST}
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun's rank; the data layer has no process group
        for line in out.summary_lines():
            print(line, flush=True)
    return out


def resolve_pseudo_labels(run: RunDir, data_cfg: Mapping[str, Any], key: str) -> Artifact | Path | None:
    """``data.<key>``: None when empty, the newest artifact of its mode for ``latest``, else the path."""
    mode = CONFIG_MODES[key]
    value = str(data_cfg.get(key, "") or "")
    if not value:
        return None
    if value == LATEST:
        found = run.find("pseudo-labels", mode=mode)
        if not found:
            raise LvisctlError(
                f"{run.manifest_path}: data.{key}=latest but no pseudo-labels of mode {mode} are recorded "
                f"(run lvisctl pseudolabel --mode {mode} --run-dir {run.root} first, or give a path)"
            )
        run.resolve(found[-1])  # exists and still matches its sha256
        return found[-1]
    path = Path(value).expanduser()
    if not path.is_file():
        raise LvisctlError(f"{path}: pseudo-label file (data.{key}) not found")
    known = run.get(run.relative(path))
    if known is not None and known.kind == "pseudo-labels" and known.meta.get("mode") not in (None, mode):
        raise LvisctlError(
            f"{path}: recorded as pseudo labels of mode {known.meta['mode']}, but data.{key} needs "
            f"mode {mode} (lvisctl pseudolabel --mode {mode})"
        )
    return path


def default_extra_image_root(run: RunDir, source: Artifact | Path) -> Path:
    """Where the extra images live when ``data.extra_image_root`` is empty: the ``image_root`` the pseudo
    labels were made with, else the folder of their image-info json (the artifact's ``image_root`` /
    ``images`` meta), else the pseudo-label file's own folder."""
    artifact = source if isinstance(source, Artifact) else run.get(run.relative(source))
    meta = artifact.meta if artifact is not None else {}
    if meta.get("image_root"):
        return Path(meta["image_root"])
    if meta.get("images"):
        return Path(meta["images"]).parent
    return _path(run, source).parent


def load_missing_annotations(
    path: str | Path,
    *,
    train_image_ids: Collection[int] | None = None,
    train_annotations: Path | None = None,
) -> dict[int, list[list[float]]]:
    """Missing-annotation pseudo labels as XYXY boxes per image id (``bbox`` is xywh in the file).

    With ``train_image_ids``, boxes of other images are dropped; a file that shares no image with the
    training set is an error (pseudo labels of another split or dataset). With ``train_annotations``, a
    file that records the sha256 of the annotation file it was made on (``pseudolabel`` writes it) must
    name that file: ids shared by chance would put ignore boxes on unrelated images.
    """
    path = Path(path)
    payload = _read_json(path)
    if train_annotations is not None:
        check_made_on(path, payload, Path(train_annotations))
    problems = _source_problems(payload, "missing", "data.pseudo_labels")
    anns = _list(payload, "annotations", problems)
    boxes: dict[int, list[list[float]]] = {}
    for ann in anns:
        if _annotation_problem(ann, problems, need_segmentation=False):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    _raise_if_any(path, problems)
    if train_image_ids is None:
        return boxes
    kept = {i: b for i, b in boxes.items() if i in train_image_ids}
    if boxes and not kept:
        raise LvisctlError(
            f"{path}: none of the {len(boxes)} images with pseudo labels is in the training set "
            "(were they made on another split?)"
        )
    return kept


def provenance_of(
    annotations: Path, checkpoint: Path, checkpoint_sha256: str | None = None
) -> dict[str, Any]:
    """``info`` entries naming what a pseudo-label file was made from (path and sha256 of each); written
    by ``pseudolabel``, compared by :func:`check_made_on`."""
    from lvisctl.rundir.io import sha256_file

    return {
        "source_annotations": str(annotations),
        "source_annotations_sha256": sha256_file(annotations),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": checkpoint_sha256 or sha256_file(checkpoint),
    }


def check_made_on(path: Path, payload: Mapping[str, Any], train_annotations: Path) -> None:
    """Refuse pseudo labels whose recorded source annotation file is not ``train_annotations``."""
    from lvisctl.rundir.io import sha256_file

    info = payload.get("info") if isinstance(payload.get("info"), dict) else {}
    recorded = info.get("source_annotations_sha256")
    if not isinstance(recorded, str):  # older / hand-made files record nothing to compare
        return
    actual = sha256_file(train_annotations)
    if recorded != actual:
        raise LvisctlError(
            f"{path}: made on {info.get('source_annotations', 'another file')} (sha256 {recorded[:12]}), "
            f"but data.train is {train_annotations} (sha256 {actual[:12]}); pseudo labels of another "
            "dataset would put ignore boxes on unrelated images (make them with lvisctl pseudolabel lvis "
            "on this training file)"
        )


def load_extra_images(path: str | Path, *, image_root: str | Path | None = None) -> LvisData:
    """Unlabeled-mode pseudo labels as an ``LvisData`` (images, annotations with ``bbox`` and an RLE or
    polygon ``segmentation``) that :class:`~lvisctl.data.dataset.LvisTrainDataset` reads like LVIS.

    ``image_root`` defaults to the json's folder (images are found as for LVIS files).
    """
    path = Path(path)
    payload = _read_json(path)
    problems = _source_problems(payload, "unlabeled", "data.extra_images")
    images: dict[int, dict] = {}
    for img in _list(payload, "images", problems):
        if _image_problem(img, problems):
            continue
        if img["id"] in images:
            problems.append(f"duplicate image id {img['id']}")
        images[img["id"]] = img
    anns_by_image: dict[int, list[dict]] = {i: [] for i in images}
    for ann in _list(payload, "annotations", problems):
        if _annotation_problem(ann, problems, need_segmentation=True):
            continue
        img = images.get(ann["image_id"])
        if img is None:
            problems.append(f"annotation {ann.get('id', '?')}: image_id {ann['image_id']} is not in 'images'")
            continue
        seg = ann["segmentation"]
        if isinstance(seg, dict) and list(seg["size"]) != [img["height"], img["width"]]:
            problems.append(f"annotation {ann.get('id', '?')}: RLE size {seg['size']} != image size")
            continue
        anns_by_image[ann["image_id"]].append(ann)
    _raise_if_any(path, problems)
    categories = {c["id"]: c for c in payload.get("categories", []) if isinstance(c, dict) and "id" in c}
    return LvisData(
        path=path,
        image_root=Path(image_root) if image_root is not None else path.parent,
        images=images,
        categories=categories,
        anns_by_image=anns_by_image,
        info=payload.get("info") if isinstance(payload.get("info"), dict) else {},
    )


# ---------------------------------------------------------------------------------------- checks
def _path(run: RunDir, source: Artifact | Path) -> Path:
    return run.artifact_path(source) if isinstance(source, Artifact) else source


def _read_json(path: Path) -> Any:
    from lvisctl.rundir.io import read_json

    return read_json(path, expect=dict, what="a pseudo-label file in LVIS format")


def _source_problems(payload: Mapping[str, Any], mode: str, key: str) -> list[str]:
    """The file says which ``pseudolabel --mode`` made it (``info.pseudo_label_source``); check it fits."""
    info = payload.get("info")
    source = info.get("pseudo_label_source") if isinstance(info, dict) else None
    if source is not None and source != mode:
        return [f"made with --mode {source}, but {key} needs --mode {mode}"]
    return []


def _list(payload: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = payload.get(key)
    if not isinstance(value, list):
        problems.append(f"top-level '{key}' must be a list")
        return []
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_problem(img: Any, problems: list[str]) -> bool:
    if not isinstance(img, dict) or not all(k in img for k in ("id", "width", "height")):
        name = f"image {img.get('id', '?')}" if isinstance(img, dict) else f"image record {str(img)[:40]}"
        problems.append(f"{name}: needs id, width and height")
        return True
    if not (_is_int(img["id"]) and _is_int(img["width"]) and _is_int(img["height"])):
        problems.append(f"image {img['id']!r}: id, width and height must be integers")
        return True
    if img["width"] <= 0 or img["height"] <= 0:
        problems.append(f"image {img['id']}: width/height must be positive")
        return True
    if not img.get("coco_url") and not img.get("file_name"):
        problems.append(f"image {img['id']}: needs coco_url or file_name to locate the file")
        return True
    return False


def _annotation_problem(ann: Any, problems: list[str], *, need_segmentation: bool) -> bool:
    keys = ("image_id", "category_id", "bbox") + (("segmentation",) if need_segmentation else ())
    if not isinstance(ann, dict):
        problems.append(f"annotation record {str(ann)[:40]}: not an object")
        return True
    name = f"annotation {ann.get('id', '?')}"
    if not all(k in ann for k in keys):
        problems.append(f"{name}: needs {', '.join(keys)}")
        return True
    if not (_is_int(ann["image_id"]) and _is_int(ann["category_id"])):
        problems.append(f"{name}: image_id and category_id must be integers")
        return True
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        problems.append(f"{name}: bbox must be 4 numbers [x, y, w, h]")
        return True
    if not (all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0):
        problems.append(f"{name}: degenerate bbox {box} (width and height must be > 0)")
        return True
    if need_segmentation and not _segmentation_ok(ann["segmentation"]):
        problems.append(f"{name}: segmentation must be an RLE dict (size, counts) or a polygon list")
        return True
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _segmentation_ok(seg: Any) -> bool:
    if isinstance(seg, dict):
        size = seg.get("size")
        return "counts" in seg and isinstance(size, list) and len(size) == 2
    return (
        isinstance(seg, list)
        and bool(seg)
        and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg)
    )


def _raise_if_any(path: Path, problems: list[str]) -> None:
    raise_problems(path, problems, max_listed=MAX_LISTED_PROBLEMS)
