"""Self-training pseudo labels (paper section 2.1, "Self-training").

Two sources, one selection step each (``lvisctl pseudolabel SOURCE``):

* **``lvis``: missing annotations on LVIS train** (file mode ``missing``). LVIS is federated: an object of
  a category that was not exhaustively annotated on an image can be present without a label, and the
  detector is then punished for finding it. The model is run on the training images; confident
  detections whose box overlaps no ground-truth box (the paper's rule), of a category that can be missing
  there (listed in the image's ``not_exhaustive_category_ids``, or not verified at all: neither annotated
  nor in ``neg_category_ids``; lvisctl's addition, ``pseudolabel.category_filter: false`` drops it), are
  kept as *pseudo labels* and treated as missing annotations: in the next
  training run, anchors and proposals with a large IoU to one of them are ignored
  (``target["ignore_boxes"]``, see ``model.roi_heads.ignore_iou`` and :mod:`lvisctl.modeling.rpn`).
* **``openimages`` / ``images``: extra unlabeled images** (file mode ``unlabeled``; Open Images in the
  paper). Confident detections become the annotations of those images; they are trained jointly with
  LVIS, a random subset (10k in the paper) per epoch, with a loss weight lambda (``target["loss_weight"]``).
  The images come from a folder, an image list or an image-info json (:mod:`lvisctl.data.image_sources`).

Both are written as LVIS v1 json (images, annotations with ``bbox``, RLE ``segmentation``, ``area``,
``score``; the checkpoint's categories), so ``lvisctl data validate`` accepts them, lvis-api loads them
and the data layer reads them like any LVIS file. The predictions made on the way are registered with
meta ``purpose: "pseudolabel"``: they are not predictions for evaluation.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_iou

from lvisctl.errors import LvisctlError

SOURCES = {"lvis": "missing", "openimages": "unlabeled", "images": "unlabeled"}  # SOURCE -> file mode
MODES = {"missing": "lvis", "unlabeled": "images"}  # the old --mode -> SOURCE
PURPOSE = "pseudolabel"  # predictions meta: evaluate --run-dir never takes these
HANDFUL = 10  # fewer kept labels than this: show the score distribution
QUANTILES = (0.5, 0.9, 0.99)
DEFAULT_SCORE_THRESH = 0.5
_SPACE = re.compile(r"[ \t\n\r]*")


# ------------------------------------------------------------------------------------ thresholds
@dataclass(frozen=True)
class ScoreThresholds:
    """A score threshold per frequency group (``r``, ``c``, ``f``)."""

    r: float = DEFAULT_SCORE_THRESH
    c: float = DEFAULT_SCORE_THRESH
    f: float = DEFAULT_SCORE_THRESH

    @classmethod
    def parse(cls, text: str) -> ScoreThresholds:
        """``"0.5"`` (every group), ``"r=0.3,c=0.4,f=0.5"`` or a mix (``"0.5,r=0.3"``: r 0.3, others 0.5)."""
        values: dict[str, float] = {}
        default = DEFAULT_SCORE_THRESH
        seen: set[str] = set()
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, _, value = part.rpartition("=")
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if key.strip() not in ("", "r", "c", "f") or not 0.0 <= number <= 1.0:
                raise LvisctlError(
                    f"--score-thresh {text!r}: expected a number in [0, 1] or per group r=0.3,c=0.4,f=0.5"
                )
            group = key.strip() or "default"
            if group in seen:  # "0.5,0.6" or "r=0.3,r=0.4": which one was meant cannot be known
                twice = "a second bare number" if group == "default" else f"{group}= twice"
                raise LvisctlError(
                    f"--score-thresh {text!r}: {twice}; give one number, or one per group r=0.3,c=0.4,f=0.5"
                )
            seen.add(group)
            if key.strip():
                values[key.strip()] = number
            else:
                default = number
        if not text.strip():
            raise LvisctlError("--score-thresh: empty")
        return cls(**{g: values.get(g, default) for g in "rcf"})

    def for_category(self, frequency: str | None) -> float:
        return (
            float(getattr(self, frequency)) if frequency in ("r", "c", "f") else max(self.r, self.c, self.f)
        )

    def by_category(self, categories: Iterable[Mapping[str, Any]]) -> dict[int, float]:
        return {int(c["id"]): self.for_category(c.get("frequency")) for c in categories}

    def __str__(self) -> str:
        if self.r == self.c == self.f:
            return f"{self.r:g}"
        return f"r={self.r:g},c={self.c:g},f={self.f:g}"


def _thresholds(score_thresh: float | Mapping[int, float], category_ids: Sequence[int]) -> torch.Tensor:
    if isinstance(score_thresh, Mapping):
        default = max(score_thresh.values(), default=DEFAULT_SCORE_THRESH)
        return torch.tensor([float(score_thresh.get(c, default)) for c in category_ids])
    return torch.full((len(category_ids),), float(score_thresh))


# ------------------------------------------------------------------------------------ selection
def select_missing_annotations(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    *,
    score_thresh: float | torch.Tensor = DEFAULT_SCORE_THRESH,
    max_gt_iou: float = 0.0,
) -> torch.Tensor:
    """Indices of detections to keep as missing-annotation pseudo labels.

    Keeps detections with ``score >= score_thresh`` (a number or one per detection) whose IoU with every
    ground-truth box (any category) is ``<= max_gt_iou``; the paper keeps boxes that "do not have overlap
    with ground truth", i.e. the default ``max_gt_iou = 0``. Boxes are xyxy.
    """
    keep = scores >= score_thresh
    if gt_boxes.numel() and boxes.numel():
        keep &= box_iou(boxes, gt_boxes).max(dim=1).values <= max_gt_iou
    return torch.nonzero(keep, as_tuple=False).flatten()


def select_unlabeled_pseudo_labels(
    scores: torch.Tensor,
    *,
    score_thresh: float | torch.Tensor = DEFAULT_SCORE_THRESH,
    max_per_image: int = 50,
) -> torch.Tensor:
    """Indices of the confident detections (highest score first) that become an unlabeled image's labels."""
    order = torch.argsort(scores, descending=True)
    thresh = score_thresh[order] if isinstance(score_thresh, torch.Tensor) else score_thresh
    order = order[scores[order] >= thresh]
    return order[:max_per_image]


def can_be_missing(image: Mapping[str, Any], category_id: int, annotated: set[int]) -> bool:
    """Federated labels: a category can have unannotated instances on an image only if it is listed as
    not exhaustively annotated there, or was never verified (neither annotated nor negative). An image
    record without the label lists tells nothing, so everything can be missing."""
    if category_id in image.get("not_exhaustive_category_ids", ()):
        return True
    return category_id not in annotated and category_id not in image.get("neg_category_ids", ())


def _area(rec: Mapping[str, Any]) -> float:
    seg = rec.get("segmentation")
    if isinstance(seg, dict) and "counts" in seg:
        from pycocotools import mask as mask_utils

        counts = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
        return float(mask_utils.area({"size": list(seg["size"]), "counts": counts}))
    return float(rec["bbox"][2] * rec["bbox"][3])


def _annotation(ann_id: int, rec: Mapping[str, Any]) -> dict[str, Any]:
    ann = {
        "id": ann_id,
        "image_id": int(rec["image_id"]),
        "category_id": int(rec["category_id"]),
        "bbox": [float(v) for v in rec["bbox"]],
        "area": _area(rec),
        "score": float(rec["score"]),
    }
    if "segmentation" in rec:
        ann["segmentation"] = rec["segmentation"]
    return ann


def _image_record(img: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **{k: img[k] for k in ("id", "width", "height") if k in img},
        **{k: img[k] for k in ("coco_url", "file_name") if k in img},
        "neg_category_ids": [],
        "not_exhaustive_category_ids": [],
    }


def _info(source: str, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    # provenance: the sha256 of the annotation file and checkpoint the labels were made from; train
    # compares the first with data.train (labels of another dataset would land on unrelated images)
    return {
        "description": f"lvisctl pseudo labels ({source})",
        "pseudo_label_source": source,
        **(provenance or {}),
    }


def pseudo_label_file(
    images: Sequence[Mapping[str, Any]],
    records: Iterable[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    *,
    source: str,
) -> dict[str, Any]:
    """Assemble an LVIS-format json from LVIS results records (``image_id``, ``category_id``, ``bbox``,
    ``score``, optional ``segmentation``; ``area`` is the mask's, else the box's). ``source`` is
    ``"missing"`` or ``"unlabeled"``."""
    return {
        "info": _info(source),
        "images": [_image_record(img) for img in images],
        "annotations": [_annotation(i, rec) for i, rec in enumerate(records, start=1)],
        "categories": [dict(c) for c in categories],
    }


@dataclass
class Selector:
    """The selection rule of one ``pseudolabel`` run, applied image by image (:meth:`select`)."""

    mode: str
    score_thresh: float | Mapping[int, float]
    images: Mapping[int, Mapping[str, Any]]
    gt_boxes_xywh: Mapping[int, Sequence[Sequence[float]]] = field(default_factory=dict)
    gt_categories: Mapping[int, set[int]] | None = None
    max_gt_iou: float = 0.0
    max_per_image: int = 50
    # lvisctl's addition, not the paper's ("pseudo labels of bounding boxes that do not have overlap with
    # ground truth"): keep only categories that can be missing on the image (pseudolabel.category_filter)
    category_filter: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("missing", "unlabeled"):
            raise ValueError(f"mode must be 'missing' or 'unlabeled', got {self.mode!r}")

    @classmethod
    def for_data(
        cls,
        data: Any,
        mode: str,
        score_thresh: Mapping[int, float],
        max_gt_iou: float,
        max_per_image: int,
        category_filter: bool = True,
    ) -> Selector:
        """The rule for the images of ``data`` (an ``LvisData``; its annotations count for LVIS)."""
        anns = data.anns_by_image if mode == "missing" else {}
        boxes = {i: [a["bbox"] for a in group] for i, group in anns.items()}
        cats = {i: {a["category_id"] for a in group} for i, group in anns.items()}
        return cls(mode, score_thresh, data.images, boxes, cats, max_gt_iou, max_per_image, category_filter)

    def select(self, image_id: int, recs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The records of one image that become pseudo labels (module docstring)."""
        if self.mode == "missing" and self.category_filter:
            annotated = (self.gt_categories or {}).get(image_id, set())
            image = self.images.get(image_id, {})
            recs = [r for r in recs if can_be_missing(image, int(r["category_id"]), annotated)]
        if not recs:
            return []
        scores = torch.tensor([float(r["score"]) for r in recs])
        thresh = _thresholds(self.score_thresh, [int(r["category_id"]) for r in recs])
        if self.mode == "missing":
            boxes = _xywh_to_xyxy(torch.tensor([r["bbox"] for r in recs], dtype=torch.float32))
            gt = torch.tensor(self.gt_boxes_xywh.get(image_id, []), dtype=torch.float32).reshape(-1, 4)
            idx = select_missing_annotations(
                boxes, scores, _xywh_to_xyxy(gt), score_thresh=thresh, max_gt_iou=self.max_gt_iou
            )
        else:
            idx = select_unlabeled_pseudo_labels(
                scores, score_thresh=thresh, max_per_image=self.max_per_image
            )
        return [recs[i] for i in idx.tolist()]


def group_by_image(records: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, list[Mapping[str, Any]]]]:
    """Consecutive records of the same image (results files list each image's detections together)."""
    for image_id, group in itertools.groupby(records, key=lambda r: int(r["image_id"])):
        yield image_id, list(group)


def pseudo_labels_from_predictions(
    predictions: Sequence[Mapping[str, Any]],
    images: Mapping[int, Mapping[str, Any]],
    gt_boxes_xywh: Mapping[int, Sequence[Sequence[float]]],
    categories: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    score_thresh: float | Mapping[int, float],
    max_gt_iou: float = 0.0,
    max_per_image: int = 50,
    gt_categories: Mapping[int, set[int]] | None = None,
) -> dict[str, Any]:
    """Select pseudo labels from an LVIS results list and return the LVIS-format pseudo-label file (in
    memory; ``make_pseudo_labels`` streams the same selection, :func:`write_pseudo_labels`).

    ``mode="missing"`` keeps confident detections away from every ground-truth box (LVIS train), of
    categories that can be missing on the image (:func:`can_be_missing`; ``gt_categories``: the annotated
    category ids per image); ``mode="unlabeled"`` keeps the confident detections of images without
    annotations. Masks are kept in both. ``score_thresh``: one number, or one per category id.
    """
    selector = Selector(mode, score_thresh, images, gt_boxes_xywh, gt_categories, max_gt_iou, max_per_image)
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for rec in predictions:
        by_image.setdefault(int(rec["image_id"]), []).append(rec)
    kept = [rec for image_id in sorted(by_image) for rec in selector.select(image_id, by_image[image_id])]
    used_images = [images[i] for i in sorted(images) if mode == "unlabeled" or i in by_image]
    return pseudo_label_file(used_images, kept, categories, source=mode)


def write_pseudo_labels(
    path: Path,
    records: Iterable[Mapping[str, Any]],
    selector: Selector,
    categories: Sequence[Mapping[str, Any]],
    *,
    scores: ScoreSample | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[int, int]:
    """Stream the selection into the LVIS json at ``path`` (atomically), one image's records at a time:
    memory does not grow with the number of images. ``scores`` sees every predicted score. Returns
    ``(labels, images)``; the images are all of ``selector.images`` for unlabeled images, those with a
    prediction for LVIS. ``provenance`` (``data.self_training.provenance_of``) joins the file's ``info``."""
    from lvisctl.inference.results import is_empty_mask
    from lvisctl.rundir import atomic_output

    seen: set[int] = set()
    count = 0
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        head = {"info": _info(selector.mode, provenance), "categories": [dict(c) for c in categories]}
        fh.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"annotations":[')
        for image_id, recs in group_by_image(records):
            seen.add(image_id)
            if scores is not None:
                scores.add(recs)
            # An empty mask is no label (and must not take a per-image slot): lvisctl's predictions hold
            # none, a results file from elsewhere may.
            recs = [r for r in recs if not is_empty_mask(r.get("segmentation"))]
            for rec in selector.select(image_id, recs):
                count += 1
                fh.write(
                    ("," if count > 1 else "") + json.dumps(_annotation(count, rec), separators=(",", ":"))
                )
        fh.write('],"images":[')
        ids = (
            sorted(selector.images) if selector.mode == "unlabeled" else sorted(seen & selector.images.keys())
        )
        for k, image_id in enumerate(ids):
            fh.write(
                ("," if k else "")
                + json.dumps(_image_record(selector.images[image_id]), separators=(",", ":"))
            )
        fh.write("]}\n")
    return count, len(ids)


def iter_json_list(path: Path, read_size: int = 1 << 20) -> Iterator[Any]:
    """The elements of a json list file, one at a time (a results file of 1.7 M images is never loaded
    whole)."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buf, pos, started, eof = "", 0, False, False
        while True:
            pos = _SPACE.match(buf, pos).end()
            if pos < len(buf) and not started:
                if buf[pos] != "[":
                    raise LvisctlError(f"{path}: not a json list")
                started, pos = True, pos + 1
                continue
            if pos < len(buf) and buf[pos] == "]":
                return
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
                continue
            if pos < len(buf):
                try:
                    item, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    item = end = None
                except RecursionError:  # "[[[[..." 100k deep: the decoder recurses per level
                    raise LvisctlError(f"{path}: json nested too deeply to be a results file") from None
                if end is not None and (end < len(buf) or eof):
                    yield item
                    pos = end
                    continue
            if eof:
                raise LvisctlError(f"{path}: truncated json list")
            more = fh.read(read_size)
            eof = not more
            buf, pos = buf[pos:] + more, 0


def iter_split_results(group_path: Path) -> Iterator[dict[str, Any]]:
    """The full records of a ``tta-infer`` / runner results pair (``X.segm.json`` + ``X.bbox.json``,
    same detections in the same order), streamed."""
    from lvisctl.inference.results import split_paths

    paths = split_paths(group_path)
    for segm, bbox in itertools.zip_longest(iter_json_list(paths["segm"]), iter_json_list(paths["bbox"])):
        if segm is None or bbox is None:
            raise LvisctlError(f"{paths['segm']} and {paths['bbox']} hold different numbers of detections")
        yield {**bbox, **segm}


class ScoreSample:
    """Predicted scores, overall and per frequency group, in bounded memory: exact counts and maxima, and
    a uniform sample (reservoir, seeded) of up to ``capacity`` scores per group for the quantiles (exact
    below that)."""

    def __init__(self, frequency: Mapping[int, str], capacity: int = 200_000) -> None:
        import numpy as np

        self.frequency, self.capacity = frequency, capacity
        self.rng = np.random.default_rng(0)
        self.samples: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        self.maxima: dict[str, float] = {}

    def add(self, recs: Iterable[Mapping[str, Any]]) -> None:
        for rec in recs:
            score = float(rec["score"])
            for key in ("all", self.frequency.get(int(rec["category_id"]), "?")):
                self._add(key, score)

    def _add(self, key: str, score: float) -> None:
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        self.maxima[key] = max(self.maxima.get(key, score), score)
        sample = self.samples.setdefault(key, [])
        if len(sample) < self.capacity:
            sample.append(score)
        else:
            j = int(self.rng.integers(n))
            if j < self.capacity:
                sample[j] = score

    def lines(self) -> list[str]:
        """The distribution, as :func:`score_distribution` prints it."""
        if not self.counts.get("all"):
            return ["the model predicted nothing on these images"]
        lines = ["predicted scores: " + self._text("all")]
        lines += [f"  {g}: " + self._text(g) for g in "rcf" if self.counts.get(g)]
        return lines

    def _text(self, key: str) -> str:
        scores = torch.tensor(self.samples[key], dtype=torch.float64)
        qs = torch.quantile(scores, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        parts = [f"p{round(q * 100)} {v:.3f}" for q, v in zip(QUANTILES, qs, strict=True)]
        return f"{self.counts[key]} detections, " + ", ".join(parts) + f", max {self.maxima[key]:.3f}"


def _xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    out = boxes.clone()
    out[:, 2:] += out[:, :2]
    return out


def score_distribution(predictions: Iterable[Mapping[str, Any]], frequency: Mapping[int, str]) -> list[str]:
    """Quantiles of the predicted scores, overall and per frequency group (why few labels survived)."""
    sample = ScoreSample(frequency)
    sample.add(predictions)
    return sample.lines()


def missing_recall(
    pseudo_labels: Sequence[Mapping[str, Any]], hidden: Sequence[Mapping[str, Any]], *, iou: float = 0.5
) -> float:
    """Fraction of known unannotated instances (``hidden``: LVIS annotations) covered by a pseudo label of
    the same image with box IoU >= ``iou`` (any category: an ignore region ignores every class)."""
    if not hidden:
        return float("nan")
    by_image: dict[int, list[list[float]]] = {}
    for ann in pseudo_labels:
        by_image.setdefault(int(ann["image_id"]), []).append(list(ann["bbox"]))
    found = 0
    for ann in hidden:
        boxes = by_image.get(int(ann["image_id"]))
        if boxes:
            ious = box_iou(
                _xywh_to_xyxy(torch.tensor([ann["bbox"]], dtype=torch.float32)),
                _xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32)),
            )
            found += int(ious.max().item() >= iou)
    return found / len(hidden)


# ------------------------------------------------------------------------------------ the command
@dataclass
class PseudoLabelOutcome:
    """What :func:`make_pseudo_labels` made (``artifact`` None on ranks > 0)."""

    artifact: Any
    checkpoint: str  # the checkpoint used, as the run dir records it
    checkpoint_note: str  # e.g. "stage 1, final, iteration 600 (newest stage-1 final)"
    skipped: Any  # image_sources.SkipReport
    score_lines: list[str] = field(default_factory=list)  # the score distribution when few survived
    incomplete: bool = False  # stopped by max_chunks on rank 0: rerun to continue
    empty_dropped: int = 0  # predictions with an empty mask left out (never a label)


def pseudolabel_checkpoint(run: Any, checkpoint: Any = None) -> tuple[Any, Path, str]:
    """``(manifest input, file, note)`` of ``--checkpoint`` (a path, ``best`` or a phase name, through the
    engine's one resolver), by default the newest final stage-1 checkpoint (pseudo labels feed stage 1),
    whatever ran last."""
    from lvisctl.engine.checkpoint import resolve_checkpoint

    note = "--checkpoint" if checkpoint is not None else "newest stage-1 final"
    found = resolve_checkpoint(run, checkpoint, stage=1 if checkpoint is None else None)
    path = run.resolve(found) if hasattr(found, "sha256") else Path(found).expanduser().resolve()
    return found, path, note


def training_json_of(run: Any, checkpoint: Any) -> Path:
    """The LVIS train json a checkpoint was trained on (its manifest lineage), else the run's train
    dataset."""
    inputs = list(getattr(checkpoint, "inputs", None) or [])
    for rec in inputs:
        if rec.get("kind") == "dataset":
            return run.input_path(rec["path"])
    for rec in inputs:
        if rec.get("kind") == "external" and str(rec["path"]).endswith(".json"):
            return run.input_path(rec["path"])
    found = run.find("dataset", split="train")
    if found:
        return run.resolve(found[-1])
    raise LvisctlError(
        f"{run.manifest_path}: cannot tell which LVIS train json the checkpoint was trained on; pass --images"
    )


def _source_name(source: Path) -> str:
    return source.stem if source.suffix == ".json" else source.name


def make_pseudo_labels(
    run_dir: Any,
    source: str,
    *,
    images: Any = None,
    image_root: Any = None,
    image_list: Any = None,
    checkpoint: Any = None,
    scales: Sequence[int] | None = None,
    score_thresh: ScoreThresholds | float = DEFAULT_SCORE_THRESH,
    max_gt_iou: float = 0.0,
    max_per_image: int = 50,
    out: Any = None,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    workers: int = 8,
    on_start: Callable[[int], None] | None = None,
    on_images: Callable[[int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    max_chunks: int | None = None,
) -> PseudoLabelOutcome:
    """``lvisctl pseudolabel SOURCE``: resolve the images, predict on them (sharded, resumable, through the
    shared runner), select pseudo labels and write them as an LVIS json registered as ``pseudo-labels``.
    ``on_note`` hears which checkpoint is used before the images are read. ``max_chunks`` stops each
    process after that many new chunks of inference (time-limited jobs); a rerun continues.
    """
    from lvisctl.data.image_sources import categories_from_stats
    from lvisctl.engine.checkpoint import load_checkpoint
    from lvisctl.inference.runner import predict_to_run_dir
    from lvisctl.rundir import RunDir
    from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs

    if source not in SOURCES:
        raise LvisctlError(f"pseudolabel: SOURCE must be one of {', '.join(SOURCES)}, got {source!r}")
    mode = SOURCES[source]
    if not isinstance(score_thresh, ScoreThresholds):
        score_thresh = ScoreThresholds.parse(str(score_thresh))
    run = RunDir(run_dir, create=checkpoint is not None)
    ckpt_art, ckpt_path, note = pseudolabel_checkpoint(run, checkpoint)
    src = _images_of(source, run, ckpt_art, images, image_root)
    out_rel = str(out) if out else f"pseudo_labels/{_source_name(src)}_{mode}.json"
    _check_output(run, out_rel, overwrite, score_thresh)  # before the model loads (checked again below)
    ckpt = load_checkpoint(ckpt_path)
    categories = categories_from_stats(ckpt["category_stats"])
    note = f"stage {ckpt.get('stage')}, iteration {ckpt.get('iteration')}" + (
        f", final; {note}" if ckpt.get("final") else f"; {note}"
    )
    _tell(on_note, [f"checkpoint: {run.relative(ckpt_path)} ({note})"])  # before the slow part
    target = run.output_path(out_rel, overwrite=True)  # where it goes; existence checked under the locks
    refuse_inputs_as_outputs([target], [ckpt_path, images, image_list])
    # one writer of this pseudo-label file at a time (its inference is locked again by the runner)
    with run.phase_lock(f"pseudolabel-{Path(out_rel).stem}"), output_lock([target]):
        out_path = run.output_path(out_rel, overwrite=overwrite)  # fail before hours of inference
        info = _image_source(source, src, run, categories, image_root, image_list, workers)
        outcome = PseudoLabelOutcome(None, run.relative(ckpt_path), note, info.skipped)
        _tell(on_note, info.skipped.lines())
        gt = _load_images(info, mode)
        # unlabeled images keep the top max_per_image anyway: the intermediate file need not hold 300
        cap = [f"inference.detections_per_image={max_per_image}"] if mode == "unlabeled" else []
        pred = predict_to_run_dir(
            Path(run_dir),
            info.path,
            checkpoint=Path(ckpt_path),
            scales=scales,
            image_root=info.image_root,
            out=Path(run.root / "predictions" / f"{info.path.stem}_for_{mode}_pseudo_labels.json"),
            overwrite=True,  # an intermediate of this command, re-made with the current checkpoint
            overrides=[*cap, *overrides],
            extra_meta={"purpose": PURPOSE},
            max_chunks=max_chunks,
            on_start=on_start,
            on_images=on_images,
        )
        if not pred.is_main or pred.artifact is None:
            outcome.incomplete = pred.is_main  # rank 0 without predictions: max_chunks stopped it
            return outcome
        category_filter = _category_filter(ckpt, overrides)
        outcome.empty_dropped = pred.summary.empty_dropped
        selector = Selector.for_data(
            gt, mode, score_thresh.by_category(categories), max_gt_iou, max_per_image, category_filter
        )
        scores = ScoreSample({c["id"]: c["frequency"] for c in categories})
        from lvisctl.data.self_training import provenance_of

        made_from = provenance_of(info.path, ckpt_path, getattr(ckpt_art, "sha256", None))
        num_labels, num_images = write_pseudo_labels(
            out_path,
            iter_split_results(pred.out_path),
            selector,
            categories,
            scores=scores,
            provenance=made_from,
        )
        if num_labels < HANDFUL:
            outcome.score_lines = scores.lines()
        if num_labels == 0:  # an empty file would train as "no pseudo labels" without a word
            out_path.unlink(missing_ok=True)
            _tell(on_note, outcome.score_lines)
            raise LvisctlError(
                f"{out_path}: not written: 0 pseudo labels kept at score >= {score_thresh}; lower "
                "--score-thresh (the score distribution is above)"
            )
        meta = {
            "mode": mode,
            "source": source,
            "images": str(info.path),
            "checkpoint": outcome.checkpoint,
            "score_thresh": str(score_thresh),
            **({"category_filter": category_filter} if mode == "missing" else {}),
            "num_labels": num_labels,
            "num_images": num_images,
            "skipped_images": outcome.skipped.count,
            **({"image_root": str(info.image_root)} if info.image_root else {}),
        }
        inputs = [pred.artifact, ckpt_art if hasattr(ckpt_art, "sha256") else ckpt_path, info.path]
        outcome.artifact = run.register("pseudo-labels", out_path, inputs=inputs, meta=meta)
        return outcome


def _check_output(run: Any, out_rel: str, overwrite: bool, score_thresh: ScoreThresholds) -> None:
    """Refuse an existing output before any work; one made with another ``--score-thresh`` says what to do."""
    if overwrite or not run.path_of(out_rel).exists():
        return
    earlier = run.get(run.relative(run.path_of(out_rel)))
    made_with = earlier.meta.get("score_thresh") if earlier is not None else None
    if made_with is not None and made_with != str(score_thresh):
        raise LvisctlError(
            f"{run.path_of(out_rel)}: already exists, made with --score-thresh {made_with} (this run: "
            f"{score_thresh}); pass --overwrite to replace it, or --out NAME.json to keep both"
        )
    run.output_path(out_rel, overwrite=overwrite)


def _category_filter(ckpt: Mapping[str, Any], overrides: Sequence[str]) -> bool:
    """``pseudolabel.category_filter`` of the checkpoint's config with the command's overrides."""
    from lvisctl.inference.predictor import checkpoint_config

    return bool(checkpoint_config(dict(ckpt), overrides).pseudolabel.category_filter)


def _tell(on_note: Callable[[str], None] | None, lines: Iterable[str]) -> None:
    for line in lines if on_note is not None else ():
        on_note(line)


def _image_source(
    source: str, src: Path, run: Any, categories: list[dict], image_root: Any, image_list: Any, workers: int
) -> Any:
    """The LVIS train json as it is (``lvis``), else an image-info json made from the folder / list."""
    from lvisctl.data.image_sources import ImageSource, SkipReport, image_info_for

    if source == "lvis":
        root = Path(image_root).expanduser() if image_root is not None else None
        return ImageSource(src.resolve(), root, 0, SkipReport(), converted=False)
    return image_info_for(
        src,
        out_dir=run.root / "predictions",
        categories=lambda: categories,
        image_root=image_root,
        image_list=image_list,
        workers=workers,
    )


def _images_of(source: str, run: Any, ckpt_art: Any, images: Any, image_root: Any) -> Path:
    """What to read: ``--images`` (json or folder), else for ``lvis`` the checkpoint's training json and
    for the others the ``--image-root`` folder."""
    if images is not None:
        return Path(images).expanduser()
    if source == "lvis":
        return training_json_of(run, ckpt_art)
    if image_root is None:
        raise LvisctlError(
            f"pseudolabel {source}: give --image-root DIR (a folder of images) or --images FILE"
        )
    return Path(image_root).expanduser()


def _load_images(info: Any, mode: str) -> Any:
    from lvisctl.data.lvis_cache import default_cache_dir, load_lvis_shared

    # the LVIS train json: parsed once per machine (sha256-keyed cache), as train reads it
    gt = load_lvis_shared(info.path, image_root=info.image_root, cache_dir=default_cache_dir())
    if mode == "missing" and not gt.has_annotations:
        raise LvisctlError(f"{info.path}: has no annotations; pseudolabel lvis needs the LVIS train json")
    if mode == "unlabeled" and gt.num_annotations:
        raise LvisctlError(
            f"{info.path}: has annotations; pseudolabel openimages/images is for unlabeled images"
        )
    return gt


# ------------------------------------------------------------------------------------ tta-infer
def images_for_run(
    run_dir: Any,
    images: Any,
    image_root: Any = None,
    image_list: Any = None,
    checkpoint: Any = None,
    *,
    workers: int = 8,
) -> tuple[Path, Path | None]:
    """``tta-infer --images DIR [--image-list FILE]``: an image folder (or a json without sizes) becomes an
    image-info json in ``DIR/predictions/`` (next to the results; evaluate, submit and lvis-api read it),
    with stable image ids and the categories of the checkpoint that will predict. An LVIS / complete
    image-info json is returned as is (not even read: LVIS val is 200 MB). Returns
    ``(images json, image root)``; skipped images are reported on stderr."""
    import sys

    from lvisctl.data.image_sources import categories_from_stats, image_info_for
    from lvisctl.engine.checkpoint import load_checkpoint
    from lvisctl.inference.runner import resolve_checkpoint
    from lvisctl.rundir import RunDir

    if Path(images).is_file() and image_list is None:
        return Path(images), Path(image_root) if image_root is not None else None  # an LVIS / image-info json

    # several checkpoints (an ensemble) predict the same categories: the first one's
    first = checkpoint[0] if isinstance(checkpoint, (list, tuple)) and checkpoint else checkpoint

    def categories() -> list[dict[str, Any]]:
        run = RunDir(run_dir, create=bool(first))
        path = resolve_checkpoint(run, first or None)[1]
        return categories_from_stats(load_checkpoint(path)["category_stats"])

    source = image_info_for(
        images,
        out_dir=Path(run_dir) / "predictions",
        categories=categories,
        image_root=image_root,
        image_list=image_list,
        workers=workers,
    )
    for line in source.skipped.lines():
        print(line, file=sys.stderr)
    if source.converted:
        print(f"images: {source.num_images} from {images} -> {source.path}", file=sys.stderr)
    return source.path, source.image_root
