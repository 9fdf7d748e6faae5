"""``lvisctl visualize``: find the images, ground truth and predictions, draw them, write PNGs.

Inputs default to the run directory's newest predictions for evaluation (never pseudo-labelling's
internal ones) and the ground truth they were made on. One PNG per image (ground truth and predictions
side by side when both are given) and one contact sheet per call, all written atomically; the contact
sheet is registered (kind ``plot``) with the files it was drawn from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvisctl.errors import LvisctlError
from lvisctl.rundir.io import atomic_group
from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs
from lvisctl.visualization.draw import Instances, contact_sheet, draw_instances, side_by_side, titled

PSEUDOLABEL = "pseudolabel"  # predictions meta purpose that is not for looking at / evaluating
MIN_DISPLAY_SIDE = 256  # smaller images are drawn enlarged


@dataclass
class ImageRef:
    image_id: int
    path: Path
    file_name: str


@dataclass
class VisualizeResult:
    out_dir: Path
    pngs: list[Path]
    contact_sheet: Path
    instances: int  # drawn, ground truth and predictions together
    predictions: Path | None
    gt: Path | None
    skipped: dict[int, str] = field(default_factory=dict)  # unreadable images, left out (as tta-infer)
    kept: int = 0  # predictions at or above the threshold (or in the per-image top k), drawn or not
    max_score: float | None = None  # the best score among the predictions of the wanted categories


# ------------------------------------------------------------------------------------------ inputs
def iter_predictions(path: Path) -> Iterator[dict[str, Any]]:
    """An LVIS results file, streamed; a ``X.segm.json`` whose ``X.bbox.json`` sibling exists is joined
    with it (tta-infer writes masks and boxes apart)."""
    from lvisctl.data.json_stream import iter_json_list
    from lvisctl.inference.results import iter_split_results

    path = Path(path)
    if not path.is_file():
        raise LvisctlError(f"{path}: predictions file not found")
    stem = path.name[: -len(".segm.json")] if path.name.endswith(".segm.json") else None
    if stem is not None and (path.parent / f"{stem}.bbox.json").is_file():
        yield from iter_split_results(path.parent / f"{stem}.json")
        return
    for rec in iter_json_list(path):
        if not isinstance(rec, dict) or "image_id" not in rec or "category_id" not in rec:
            raise LvisctlError(f"{path}: not an LVIS results file (a json list of detections)")
        yield rec


def category_filter(spec: str | None, categories: Mapping[int, Mapping[str, Any]]) -> set[int] | None:
    """``None`` (all), frequency groups (``r``, ``r,c``) or category names / ids (``cat,dog,17``)."""
    if not spec:
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if parts and all(p in ("r", "c", "f") for p in parts):
        return {i for i, c in categories.items() if c.get("frequency") in parts}
    by_name = {str(c.get("name")): i for i, c in categories.items()}
    chosen, unknown = set(), []
    for p in parts:
        if p in by_name:
            chosen.add(by_name[p])
        elif p.isdigit() and int(p) in categories:
            chosen.add(int(p))
        else:
            unknown.append(p)
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], list(by_name), n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise LvisctlError(f"--categories: unknown {', '.join(unknown[:5])}{more}")
    return chosen


def _image_refs(
    images: Path | None, gt: Any, info_json: Path | None, image_root: Path | None
) -> dict[int, ImageRef]:
    """Image id -> file, from ``--images`` (folder or json), else the ground truth, else the image-info
    json the predictions were made on."""
    from lvisctl.data.formats import find_image
    from lvisctl.data.image_sources import plan_source
    from lvisctl.data.lvis import image_relpath, load_lvis

    if images is not None and images.is_dir():
        planned, root, _ = plan_source(images, image_root=image_root)
        return {p.image_id: ImageRef(p.image_id, root / p.file_name, p.file_name) for p in planned}
    source = gt
    if images is not None:
        source = load_lvis(images, image_root=image_root)
    elif source is None and info_json is not None:
        source = load_lvis(info_json, image_root=image_root)
    if source is None:
        raise LvisctlError("visualize: no images: give --images FILE|DIR or --gt FILE")
    root = image_root or _recorded_root(source) or source.image_root
    return {
        i: ImageRef(i, find_image(Path(root), img), image_relpath(img)) for i, img in source.images.items()
    }


def _recorded_root(data: Any) -> Path | None:
    """The image root an lvisctl image-info json records (``tta-infer --images DIR`` writes it)."""
    root = data.info.get("image_root") if isinstance(data.info, dict) else None
    return Path(root) if root else None


# ------------------------------------------------------------------------------------------ drawing
def read_rgb(path: Path) -> torch.Tensor:
    """``uint8 [3, H, W]`` through the one image reader (``data/image_io.py``)."""
    from lvisctl.data.image_io import read_image_tensor

    return read_image_tensor(path)


def _rle(seg: Any, h: int, w: int) -> dict:
    from lvisctl.data.lvis import ann_to_rle

    return ann_to_rle({"segmentation": seg}, h, w)


def instances_of(
    records: Sequence[Mapping[str, Any]], names: Mapping[int, str], h: int, w: int, *, scores: bool
) -> Instances:
    """GT annotations or results records as drawable instances (masks decoded at ``h x w``)."""
    from pycocotools import mask as mask_utils

    boxes, cats, texts, masks = [], [], [], []
    for rec in records:
        seg = rec.get("segmentation")
        rle = _rle(seg, h, w) if seg is not None else None
        if rle is not None:
            masks.append(mask_utils.decode(rle).astype(bool))
        box = rec.get("bbox")
        if box is None and rle is not None:
            box = mask_utils.toBbox(rle).tolist()
        x, y, bw, bh = (float(v) for v in box)
        boxes.append([x, y, x + bw, y + bh])
        cat = int(rec["category_id"])
        cats.append(cat)
        name = names.get(cat, str(cat))
        texts.append(f"{name} {float(rec['score']):.2f}" if scores and "score" in rec else name)
    mask_tensor = torch.from_numpy(np.stack(masks)) if masks and len(masks) == len(boxes) else None
    return Instances(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), cats, texts, mask_tensor)


def display_factor(h: int, w: int) -> int:
    """Small images are enlarged (integer factor, nearest) so names and scores stay legible."""
    return max(1, -(-MIN_DISPLAY_SIDE // max(h, w)))


def _enlarged(instances: Instances, k: int) -> Instances:
    if k == 1:
        return instances
    masks = instances.masks
    if masks is not None:
        masks = masks.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)
    return Instances(instances.boxes * k, instances.category_ids, instances.texts, masks)


def render_image(
    image: torch.Tensor,
    gt: Sequence[Mapping[str, Any]] | None,
    preds: Sequence[Mapping[str, Any]] | None,
    names: Mapping[int, str],
    score_thresh: float | str,
) -> torch.Tensor:
    """One PNG's pixels: the ground truth and / or predictions panels of an image (small images
    enlarged by :func:`display_factor`)."""
    _, h, w = image.shape
    k = display_factor(h, w)
    big = image.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2) if k > 1 else image
    panels = []
    if gt is not None:
        drawn = draw_instances(big, _enlarged(instances_of(gt, names, h, w, scores=False), k))
        panels.append(titled(drawn, "ground truth"))
    if preds is not None:
        drawn = draw_instances(big, _enlarged(instances_of(preds, names, h, w, scores=True), k))
        which = f"score >= {score_thresh:g}" if isinstance(score_thresh, float) else score_thresh
        panels.append(titled(drawn, f"predictions ({which})"))
    return side_by_side(panels)


def save_png(pixels: torch.Tensor, path: Path) -> Path:
    from PIL import Image

    from lvisctl.rundir import atomic_output

    with atomic_output(path) as tmp:
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp, format="PNG", optimize=True)
    return path


# ------------------------------------------------------------------------------------------ command
@dataclass
class _Inputs:
    predictions: Path | None
    pred_input: Any  # the manifest entry (or path) of the predictions
    gt: Any  # LvisData with annotations, or None
    info_json: Path | None  # the json the predictions were made on (image-info for a folder)


def default_predictions_for(run: Any, split: Path | None) -> Any | None:
    """The run's default predictions (the one rule of :mod:`lvisctl.rundir.defaults`): the newest made on
    ``split`` (the ``--images`` json or ``--gt``) when one is given, else the newest; printed."""
    from lvisctl.rundir.defaults import DefaultChoice, announce, default_predictions

    found = [a for a in run.find("predictions", iou_type="segm") if a.meta.get("purpose") != PSEUDOLABEL]
    if not found:  # a run without predictions: the ground truth alone is drawn
        return None
    if split is not None:
        return announce(default_predictions(run, split, found), "predictions").artifact
    return announce(
        DefaultChoice(found[-1], "newest predictions; --gt chooses a split"), "predictions"
    ).artifact


def _resolve_inputs(
    run: Any, predictions: Path | None, gt: Path | None, image_root: Path | None, images: Path | None = None
) -> _Inputs:
    """Predictions: given, else the run's default (made on the ``--images`` json or ``--gt`` when given).
    Ground truth: given, else the json the predictions were made on when it has annotations."""
    from lvisctl.data.lvis import load_lvis

    if predictions is not None and not Path(predictions).is_file():
        what = (
            "is a folder, not a results file" if Path(predictions).is_dir() else "predictions file not found"
        )
        raise LvisctlError(f"{predictions}: {what}")
    split = images if images is not None and images.is_file() else gt
    art = default_predictions_for(run, split) if predictions is None else run.get(run.relative(predictions))
    if predictions is None and art is not None:
        predictions = run.resolve(art)
    info_json = Path(art.meta["gt"]) if art is not None and art.meta.get("gt") else None
    if gt is not None:
        gt_data = load_lvis(gt, image_root=image_root)
    elif info_json is not None and info_json.is_file():
        candidate = load_lvis(info_json, image_root=image_root)
        gt_data = candidate if candidate.num_annotations else None
    else:
        gt_data = None
    if predictions is None and gt_data is None:
        raise LvisctlError(
            f"{run.root}: nothing to draw: no predictions recorded; give --predictions or --gt"
        )
    return _Inputs(predictions, art or predictions, gt_data, info_json)


@dataclass(frozen=True)
class VisualizeJob:
    """What ``lvisctl visualize`` draws: up to ``max_images`` images of ``run_dir``'s (or the given)
    predictions and/or ground truth, into ``out`` (default ``RUN/visualize/<name>/``). ``topk``: the
    ``topk`` best predictions of each image instead of those >= ``score_thresh``."""

    run_dir: Path
    images: Path | None = None
    predictions: Path | None = None
    gt: Path | None = None
    image_root: Path | None = None
    categories: str | None = None
    score_thresh: float = 0.3
    out: Path | None = None
    max_images: int = 16
    overwrite: bool = False
    topk: int | None = None


def visualize(job: VisualizeJob) -> VisualizeResult:
    """Draw up to ``job.max_images`` images (those with something to draw first, by id), a contact sheet."""
    run_dir, images, predictions, gt = job.run_dir, job.images, job.predictions, job.gt
    image_root = job.image_root
    categories, score_thresh, out, max_images = job.categories, job.score_thresh, job.out, job.max_images
    overwrite, topk = job.overwrite, job.topk
    from lvisctl.rundir import RunDir

    if predictions is None and gt is None and not Path(run_dir).is_dir():
        raise LvisctlError(
            f"{run_dir}: run directory does not exist "
            "(give --predictions or --gt to draw files from elsewhere)"
        )
    run = RunDir(run_dir)
    src = _resolve_inputs(run, predictions, gt, image_root, images)
    refs = _image_refs(images, src.gt, src.info_json, image_root)
    cats = dict(src.gt.categories) if src.gt is not None else _categories_of(src.info_json)
    names = {i: str(c.get("name", i)) for i, c in cats.items()}
    keep = category_filter(categories, cats)

    def wanted(rec: Mapping[str, Any]) -> bool:
        return keep is None or int(rec["category_id"]) in keep

    preds: dict[int, list] | None = None
    best: float | None = None
    if src.predictions is not None:  # streamed: only what will be drawn is kept
        preds, best = _kept_predictions(iter_predictions(src.predictions), wanted, score_thresh, topk)
    gts = {i: [a for a in anns if wanted(a)] for i, anns in src.gt.anns_by_image.items()} if src.gt else None
    chosen = _choose(refs, preds or {}, gts or {}, max_images)
    name = _stem(src.predictions or src.gt.path)
    out_dir = Path(out).expanduser().resolve() if out else run.root / "visualize" / name
    targets = [out_dir / f"{i}.png" for i in chosen] + [out_dir / "contact_sheet.png"]
    sources = [src.predictions, src.gt.path if src.gt else None, *(refs[i].path for i in chosen)]
    refuse_inputs_as_outputs(targets, sources)
    made_dir = not out_dir.exists()
    try:
        with output_lock(targets[-1:]), atomic_group():  # every png appears, or none (a full disk)
            _refuse_existing(out_dir, [t.name for t in targets], overwrite)
            loaded, skipped = _read_chosen(chosen, refs, preds, src.predictions)  # all checked first
            pngs, tiles, drawn = [], [], 0
            for image_id, image in loaded:
                gt_recs = gts.get(image_id, []) if gts is not None else None
                pred_recs = None
                if preds is not None:
                    pred_recs = sorted(preds.get(image_id, []), key=lambda r: -float(r["score"]))
                which = float(score_thresh) if topk is None else f"top {topk}"
                pixels = render_image(image, gt_recs, pred_recs, names, which)
                drawn += len(gt_recs or []) + len(pred_recs or [])
                pngs.append(save_png(pixels, out_dir / f"{image_id}.png"))
                tiles.append(titled(pixels, f"{image_id} {refs[image_id].file_name}"))
            if not pngs:
                none_listed = " (none of the predictions' images is listed)"
                why = f" ({skip_line(skipped)})" if skipped else none_listed
                raise LvisctlError(f"{run.root}: no image to draw{why}")
            columns = 2 if gts is not None and preds is not None else 4
            sheet = save_png(contact_sheet(tiles, columns=columns), out_dir / "contact_sheet.png")
    except BaseException:
        if made_dir:  # a failed command leaves no empty output folder behind
            _remove_empty_tree(out_dir)
        raise
    meta = {"purpose": "visualize", "images": len(pngs), "score_thresh": score_thresh}
    if topk is not None:
        meta["topk"] = topk
    inputs = [p for p in (src.pred_input, src.gt.path if src.gt else None) if p is not None]
    run.register("plot", sheet, inputs=inputs, meta={**meta, "categories": categories or "all"})
    gt_path = src.gt.path if src.gt else None
    kept = sum(len(v) for v in (preds or {}).values())
    return VisualizeResult(out_dir, pngs, sheet, drawn, src.predictions, gt_path, skipped, kept, best)


def _kept_predictions(
    records: Iterator[dict[str, Any]],
    wanted: Callable[[Mapping[str, Any]], bool],
    score_thresh: float,
    topk: int | None,
) -> tuple[dict[int, list], float | None]:
    """Per image, the predictions to draw (>= ``score_thresh``, or the ``topk`` best), and the best score
    seen (so "nothing to draw" can say how far the threshold is)."""
    preds: dict[int, list] = {}
    best: float | None = None
    for rec in records:
        if not wanted(rec):
            continue
        score = float(rec.get("score", 1.0))
        best = score if best is None else max(best, score)
        if topk is None and score < score_thresh:
            continue
        kept = preds.setdefault(int(rec["image_id"]), [])
        kept.append(rec)
        if topk is not None and len(kept) > 2 * topk:  # bounded memory on 300 detections per image
            kept.sort(key=lambda r: -float(r["score"]))
            del kept[topk:]
    if topk is not None:
        for kept in preds.values():
            kept.sort(key=lambda r: -float(r["score"]))
            del kept[topk:]
    return preds, best


def _read_chosen(
    chosen: Sequence[int], refs: Mapping[int, ImageRef], preds: Mapping[int, list] | None, source: Any
) -> tuple[list[tuple[int, torch.Tensor]], dict[int, str]]:
    """The chosen images, read, with their predictions' masks checked against their size (a damaged RLE,
    or one of 20000 x 20000 on a small image, is refused before anything is decoded or written).
    Unreadable images are skipped and returned with the reason, as ``tta-infer`` does."""
    from lvisctl.data.image_io import ImageReadError

    loaded, skipped = [], {}
    for image_id in chosen:
        try:
            image = read_rgb(refs[image_id].path)
        except ImageReadError as err:
            skipped[image_id] = str(err)
            continue
        _check_masks(source, image_id, (preds or {}).get(image_id, []), image.shape[1], image.shape[2])
        loaded.append((image_id, image))
    return loaded, skipped


def _check_masks(source: Any, image_id: int, records: Sequence[Mapping[str, Any]], h: int, w: int) -> None:
    from lvisctl.data.lvis import rle_problem

    for rec in records:
        seg = rec.get("segmentation")
        problem = rle_problem(seg, h, w) if isinstance(seg, dict) else None
        if problem:
            raise LvisctlError(f"{source}: image {image_id}: {problem}; nothing was drawn")


def skip_line(skipped: Mapping[int, str]) -> str:
    shown = "; ".join(f"image {i}: {why}" for i, why in list(skipped.items())[:3])
    more = f"; ... and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return f"{len(skipped)} unreadable image(s) skipped: {shown}{more}"


def _remove_empty_tree(folder: Path) -> None:
    with contextlib.suppress(OSError):
        for lock in folder.glob(".*.lock"):
            lock.unlink()
        folder.rmdir()


def _categories_of(info_json: Path | None) -> dict[int, dict]:
    if info_json is not None and info_json.is_file():
        from lvisctl.data.lvis import load_lvis

        return dict(load_lvis(info_json).categories)
    return {}


def _choose(
    refs: Mapping[int, ImageRef], preds: Mapping[int, list], gt: Mapping[int, list], n: int
) -> list[int]:
    """Images with something to draw first (by id), then the others; ``n`` at most."""
    busy = [i for i in sorted(refs) if preds.get(i) or gt.get(i)]
    rest = [i for i in sorted(refs) if not (preds.get(i) or gt.get(i))]
    return (busy + rest)[:n]


def _stem(path: Path) -> str:
    name = Path(path).name
    for suffix in (".segm.json", ".bbox.json", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _refuse_existing(out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise LvisctlError(
            f"{out_dir / existing[0]}: already exists; pass --overwrite to replace it or choose another --out"
        )
