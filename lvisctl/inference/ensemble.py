"""Model ensembling: fuse several models' detections of the same images, boxes and masks.

Boxes are fused class-wise per image with ensemble-boxes' weighted boxes fusion (default), or by NMS /
Soft-NMS over the members' concatenated detections. Masks: each fused detection's mask is the pixel-wise
weighted vote of the members' masks that were fused into it (weight = member score x model weight, the
weights WBF averages the boxes with), so segm results stay valid. ensemble-boxes returns only the fused
boxes, not which inputs formed each one, so :func:`wbf_clusters` runs its clustering loop with its own
``find_matching_box_fast`` / ``get_weighted_box`` and records the members (tests check the boxes and
scores equal ``weighted_boxes_fusion``'s). With ``nms`` / ``soft-nms`` a kept detection keeps its own mask.

Two entry points: :class:`EnsemblePredictor` (``tta-infer --checkpoint A --checkpoint B``: each model's
TTA output fused before writing) and :func:`ensemble_to_run_dir` (``lvisctl ensemble``: LVIS results
files, sharded over ``torchrun`` ranks and resumable by chunks like ``tta-infer``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.errors import LvisctlError
from lvisctl.inference.predictor import Detections, concat, full_masks, select, spare_count, top_k

METHODS = ("wbf", "nms", "soft-nms")


# ------------------------------------------------------------------------------ fusion
def wbf_clusters(
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    weights: Sequence[float],
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple[int, int, float]]]]:
    """ensemble-boxes' ``weighted_boxes_fusion`` (``conf_type='avg'``) on boxes normalised to [0, 1],
    plus each fused box's members ``[(model, index, score * weight), ...]``.

    Returns ``(boxes [F, 4], scores [F], labels [F], members)``, best score first, as ensemble-boxes does.
    """
    from ensemble_boxes.ensemble_boxes_wbf import find_matching_box_fast, get_weighted_box

    weights_arr = np.asarray(weights, dtype=np.float64)
    rows: dict[int, list[list[float]]] = defaultdict(list)
    origin: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for t, (b_t, s_t, l_t) in enumerate(zip(boxes, scores, labels, strict=True)):
        for j in range(len(s_t)):
            if s_t[j] < skip_box_thr:
                continue
            x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in b_t[j])
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
            if (x2 - x1) * (y2 - y1) == 0.0:
                continue
            label = int(l_t[j])
            rows[label].append([label, float(s_t[j]) * weights_arr[t], weights_arr[t], t, x1, y1, x2, y2])
            origin[label].append((t, j))
    fused_rows, members = [], []
    for label, label_rows in rows.items():
        arr = np.array(label_rows)
        order = arr[:, 1].argsort()[::-1]  # the same sort as ensemble-boxes' prefilter_boxes
        arr, src = arr[order], [origin[label][i] for i in order]
        clusters: list[list[np.ndarray]] = []
        cluster_members: list[list[tuple[int, int, float]]] = []
        weighted = np.empty((0, 8))
        for j in range(len(arr)):
            index, _ = find_matching_box_fast(weighted, arr[j], iou_thr)
            member = (src[j][0], src[j][1], float(arr[j][1]))
            if index != -1:
                clusters[index].append(arr[j])
                cluster_members[index].append(member)
                weighted[index] = get_weighted_box(clusters[index], "avg")
            else:
                clusters.append([arr[j].copy()])
                cluster_members.append([member])
                weighted = np.vstack((weighted, arr[j].copy()))
        for i, cluster in enumerate(clusters):
            weighted[i, 1] = weighted[i, 1] * min(len(weights_arr), len(cluster)) / weights_arr.sum()
        fused_rows.append(weighted)
        members.extend(cluster_members)
    if not fused_rows:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0), []
    overall = np.concatenate(fused_rows, axis=0)
    order = overall[:, 1].argsort()[::-1]
    return overall[order, 4:], overall[order, 1], overall[order, 0], [members[i] for i in order]


def vote_masks(
    members: Sequence[Sequence[tuple[int, int, float]]],
    masks: Sequence[torch.Tensor],
    image_size: tuple[int, int],
    regions: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Pixel-wise weighted vote: fused mask = (sum of weight x member mask) / (sum of weights) >= 0.5.

    A lone member's mask is copied; otherwise the vote runs inside the bounding box of the members' pixels
    (``regions``: each member's mask boxes ``[N, 4]`` xywh, e.g. RLE ``toBbox``; computed when absent).
    The result is column-major in memory (like RLE), so encoding it needs no transposing copy.
    """
    height, width = image_size
    out = torch.zeros((len(members), width, height), dtype=torch.bool).transpose(1, 2)
    if regions is None:
        regions = [_mask_boxes(m) for m in masks]
    for i, cluster in enumerate(members):
        if len(cluster) == 1:
            out[i] = masks[cluster[0][0]][cluster[0][1]]
            continue
        boxes = torch.stack([regions[t][j] for t, j, _ in cluster]).float()
        boxes = boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)]
        if boxes.numel() == 0:
            continue
        x0, y0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
        x1, y1 = (
            int(math.ceil((boxes[:, 0] + boxes[:, 2]).max())),
            int(math.ceil((boxes[:, 1] + boxes[:, 3]).max())),
        )
        stack = torch.stack([masks[t][j, y0:y1, x0:x1] for t, j, _ in cluster])
        weights = torch.tensor([w for _, _, w in cluster], dtype=torch.float64)
        votes = torch.einsum("m,mhw->hw", weights, stack.to(torch.float64))
        out[i, y0:y1, x0:x1] = votes >= 0.5 * weights.sum()
    return out


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """xywh boxes of the pixels of bool masks [N, H, W] (0 x 0 for an empty mask)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    out = torch.zeros((masks.shape[0], 4))
    for j in range(masks.shape[0]):
        ys, xs = torch.nonzero(rows[j]).flatten(), torch.nonzero(cols[j]).flatten()
        if ys.numel():
            out[j] = torch.tensor([xs[0], ys[0], xs[-1] + 1 - xs[0], ys[-1] + 1 - ys[0]], dtype=torch.float32)
    return out


def fuse_detections(
    members: Sequence[Detections],
    image_size: tuple[int, int],
    *,
    weights: Sequence[float] | None = None,
    method: str = "wbf",
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    k: int = 300,
) -> Detections:
    """Fuse several models' detections of one image (``boxes`` xyxy in pixels, ``scores``, ``labels``,
    bool ``masks`` [N, H, W] or the predictor's RoI-level ``mask_probs``, optional ``mask_scores``) into
    one set of at most ``k``, best first. WBF votes on whole masks (pasted here when the members are
    RoI-level); NMS / Soft-NMS keep each survivor's own mask as it came (RoI-level stays RoI-level)."""
    if method not in METHODS:
        raise LvisctlError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    if method == "wbf":
        fused = _fuse_wbf(members, weights, scale, image_size, iou_thr, skip_box_thr, k)
    else:
        fused = _fuse_suppress(members, weights, method, iou_thr)
    return top_k(fused, k)


def with_cap(fused: Detections, cap: int) -> Detections:
    """``fused`` with the per-image ``cap`` a results writer stops at (the rest are spares that refill the
    slots of masks that come out empty; the fusion's top-k truncates last, so the first ``cap`` are
    the fusion of ``k=cap``)."""
    return {**fused, "cap": torch.tensor(cap)}


def _fuse_wbf(members, weights, scale, image_size, iou_thr, skip_box_thr, k) -> Detections:
    norm = [(m["boxes"].double() / scale).numpy() for m in members]
    boxes, scores, labels, clusters = wbf_clusters(
        norm,
        [m["scores"].double().numpy() for m in members],
        [m["labels"].numpy() for m in members],
        weights,
        iou_thr,
        skip_box_thr,
    )
    boxes, scores, labels, clusters = boxes[:k], scores[:k], labels[:k], clusters[:k]  # best first: vote k
    masks, regions = _member_masks(members)
    out = {
        "boxes": torch.from_numpy(boxes.copy()).float() * scale.float(),
        "scores": torch.from_numpy(scores.copy()).float(),
        "labels": torch.from_numpy(labels.copy()).long(),
        "masks": vote_masks(clusters, masks, image_size, regions),
    }
    if all("mask_scores" in m for m in members):  # the mask-IoU ratio, averaged like the scores
        ratio = []
        for cluster in clusters:
            total = sum(w for _, _, w in cluster)
            ratio.append(
                sum(w * _mask_ratio(members[t], j) for t, j, w in cluster) / total if total > 0 else 1.0
            )
        out["mask_scores"] = (out["scores"] * torch.tensor(ratio, dtype=torch.float32)).clamp(0, 1)
    return out


def _member_masks(members: Sequence[Detections]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Each member's whole masks for the vote, and where their pixels are (xywh; None: compute them)."""
    if all("masks" in m for m in members):
        regions = [m["mask_boxes"] for m in members] if all("mask_boxes" in m for m in members) else None
        return [m["masks"] for m in members], regions
    from lvisctl.inference.postprocess import paste_masks

    masks, regions = [], []
    for m in members:
        if "masks" in m:
            masks.append(full_masks(m))
            regions.append(_mask_boxes(masks[-1]))
            continue
        pasted, places = paste_masks(
            m["mask_probs"],
            m.get("paste_boxes", m["boxes"]),
            tuple(m["image_size"].tolist()),
            float(m.get("mask_thresh", 0.5)),
        )
        masks.append(pasted)
        xyxy = torch.from_numpy(places).float()  # each pasted mask lies inside its place
        regions.append(torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1))
    return masks, regions


def _mask_ratio(member: Detections, j: int) -> float:
    return float(member["mask_scores"][j]) / max(float(member["scores"][j]), 1e-12)


def _fuse_suppress(members, weights, method, iou_thr) -> Detections:
    """NMS / Soft-NMS over the concatenated members, scores scaled by weight / max weight."""
    from torchvision.ops import batched_nms

    from lvisctl.inference.soft_nms import soft_nms

    top = max(weights)
    merged = concat(_same_mask_kind(members))
    factor = torch.cat(
        [torch.full((m["scores"].numel(),), w / top) for m, w in zip(members, weights, strict=True)]
    )
    scores = merged["scores"].float() * factor
    if method == "nms":
        keep = batched_nms(merged["boxes"].float(), scores, merged["labels"], iou_thr)
        new_scores = scores[keep]
    else:
        keep, new_scores = soft_nms(merged["boxes"], scores, merged["labels"])
    out = select(merged, keep)
    if "mask_scores" in out:
        out["mask_scores"] = (
            out["mask_scores"].float() * factor[keep] * new_scores / scores[keep].clamp(min=1e-12)
        ).clamp(0, 1)
    out["scores"] = new_scores
    return out


def _same_mask_kind(members: Sequence[Detections]) -> list[Detections]:
    """The members as they are when their masks can be concatenated (all RoI-level of one size, or all
    whole masks); otherwise every member with whole ``masks`` (e.g. models of different mask sizes)."""
    sizes = {tuple(m["mask_probs"].shape[1:]) if "mask_probs" in m else None for m in members}
    if len(sizes) == 1:
        return list(members)
    whole = []
    for m in members:
        rest = {
            k: v for k, v in m.items() if k not in ("mask_probs", "paste_boxes", "image_size", "mask_thresh")
        }
        whole.append({**rest, "masks": full_masks(m)})
    return whole


@dataclass(frozen=True)
class EnsembleSettings:
    """``inference.ensemble`` of the config: how ``tta-infer --checkpoint A --checkpoint B`` fuses."""

    method: str = "wbf"
    iou: float = 0.55
    skip_score: float = 0.0
    weights: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, ens_cfg: Mapping[str, Any]) -> EnsembleSettings:
        return cls(
            method=str(ens_cfg["method"]),
            iou=float(ens_cfg["iou"]),
            skip_score=float(ens_cfg["skip_score"]),
            weights=tuple(float(w) for w in ens_cfg["weights"]),
        )


class EnsemblePredictor:
    """Several predictors (one per checkpoint) whose per-image outputs are fused by :func:`fuse_detections`;
    the same ``predict_batch`` interface as :class:`lvisctl.inference.predictor.Predictor`."""

    def __init__(
        self, predictors: Sequence[Any], settings: EnsembleSettings, detections_per_image: int = 300
    ):
        if settings.weights and len(settings.weights) != len(predictors):
            raise LvisctlError(
                f"inference.ensemble.weights: {len(settings.weights)} weights for "
                f"{len(predictors)} checkpoints"
            )
        if settings.method not in METHODS:
            raise LvisctlError(f"inference.ensemble.method: {settings.method!r} is not one of {METHODS}")
        self.predictors = list(predictors)
        self.settings = settings
        self.detections_per_image = detections_per_image
        self.spares = 0  # fused candidates kept beyond the cap for a results writer (writing_spares)

    @property
    def device(self) -> torch.device:
        """The first model's device (where the images are copied once for all models)."""
        return torch.device(getattr(self.predictors[0], "device", "cpu"))

    def predict(self, image: torch.Tensor) -> Detections:
        return self.predict_batch([image])[0]

    @property
    def empty_dropped(self) -> int:
        """Surely-empty masks the member predictors left out before their caps."""
        return sum(int(getattr(p, "empty_dropped", 0)) for p in self.predictors)

    def predict_batch(self, images: Sequence[torch.Tensor]) -> list[Detections]:
        images = [img.to(self.device, non_blocking=img.is_pinned()) for img in images]
        outputs = [p.predict_batch(images) for p in self.predictors]  # each member at most its cap
        fused = [
            fuse_detections(
                [out[i] for out in outputs],
                tuple(image.shape[-2:]),
                weights=self.settings.weights or None,
                method=self.settings.method,
                iou_thr=self.settings.iou,
                skip_box_thr=self.settings.skip_score,
                k=self.detections_per_image + self.spares,
            )
            for i, image in enumerate(images)
        ]
        return [with_cap(f, self.detections_per_image) if self.spares else f for f in fused]


# ------------------------------------------------------------------------------ results files
@dataclass
class ResultsInput:
    """One ``lvisctl ensemble`` input: full records (box and mask) grouped by image."""

    path: Path  # as given
    files: list[Path]  # the files read (a tta-infer .segm.json / .bbox.json pair, or one full file)
    by_image: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)


def _pair_of(path: Path) -> dict[str, Path] | None:
    """The tta-infer pair a path names (``X.segm.json``, ``X.bbox.json`` or ``X.json``), if both exist."""
    from lvisctl.inference.results import split_paths

    name = path.name
    for suffix in (".segm.json", ".bbox.json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)] + ".json"
    pair = split_paths(path.with_name(name))
    return pair if all(p.is_file() for p in pair.values()) else None


def _load_json_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise LvisctlError(f"{path}: results file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LvisctlError(f"{path}: not valid json ({err})") from None
    except RecursionError:  # "[[[[..." 100k deep
        raise LvisctlError(f"{path}: json nested too deeply to be a results file") from None
    if not isinstance(data, list):
        raise LvisctlError(f"{path}: results must be a json list of detections, got {type(data).__name__}")
    return data


def read_results_input(path: Path, table: Any = None) -> ResultsInput:
    """Read and check one input. A ``tta-infer`` pair is joined: box and box score from the bbox file,
    mask and mask score (``mask_score``) from the segm file; a single file needs ``segmentation`` (its
    box, when absent, is the mask's bounding box). Every file passes ``evaluate``'s validator first
    (against ``table``, the ``--images`` json's, when given; :mod:`lvisctl.inference.ensemble_checks`)."""
    from lvisctl.inference.ensemble_checks import check_results_files

    pair = _pair_of(path)
    if pair is not None:
        segm, bbox = _load_json_list(pair["segm"]), _load_json_list(pair["bbox"])
        check_results_files([(pair["segm"], segm), (pair["bbox"], bbox)], table)
        if len(segm) != len(bbox):
            raise LvisctlError(f"{pair['segm']}: holds {len(segm)} detections, {pair['bbox']} {len(bbox)}")
        records = [{**s, **b, "mask_score": s.get("score")} for s, b in zip(segm, bbox, strict=True)]
        result = ResultsInput(path, [pair["segm"], pair["bbox"]])
    else:
        records = _load_json_list(path)
        check_results_files([(path, records)], table)
        result = ResultsInput(path, [path])
    for i, rec in enumerate(records):
        problem = _record_problem(rec)
        if problem:
            raise LvisctlError(f"{result.files[0]}: result {i} {problem}")
        image_id = int(rec["image_id"])
        size = (int(rec["segmentation"]["size"][0]), int(rec["segmentation"]["size"][1]))
        if result.sizes.setdefault(image_id, size) != size:
            raise LvisctlError(f"{result.files[0]}: image {image_id} has masks of two sizes")
        result.by_image.setdefault(image_id, []).append(rec)
    return result


def _record_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return "is not an object"
    for key in ("image_id", "category_id"):
        if not isinstance(rec.get(key), int) or isinstance(rec.get(key), bool):
            return f"has {key} {rec.get(key)!r} (must be an integer)"
    score = rec.get("score")
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        return f"has score {score!r} (must be a finite number)"
    seg = rec.get("segmentation")
    if not isinstance(seg, dict) or "counts" not in seg or len(seg.get("size", ())) != 2:
        return "has no RLE 'segmentation' ({size, counts}); ensemble fuses masks (give a segm results file)"
    box = rec.get("bbox")
    if box is not None and (not isinstance(box, list) or len(box) != 4):
        return f"has bbox {box!r} (must be [x, y, w, h])"
    return None


def check_image_sets(inputs: Sequence[ResultsInput], images: Mapping[int, Mapping[str, Any]] | None, source):
    """Different image sets, unknown ids, mismatched sizes -> one ``LvisctlError`` line."""
    first = inputs[0]
    for inp in inputs:
        if images is not None:
            unknown = sorted(set(inp.by_image) - set(images))
            if unknown:
                raise LvisctlError(
                    f"{inp.path}: {len(unknown)} image ids not in {source} (e.g. {unknown[0]}): unknown ids"
                )
            for image_id, (h, w) in inp.sizes.items():
                rec = images[image_id]
                if (int(rec["height"]), int(rec["width"])) != (h, w):
                    raise LvisctlError(
                        f"{inp.path}: image {image_id} masks are {h}x{w}, {source} says "
                        f"{rec['height']}x{rec['width']}: results for a different image set"
                    )
        elif set(inp.by_image) != set(first.by_image):
            extra = sorted(set(inp.by_image) ^ set(first.by_image))
            raise LvisctlError(
                f"{inp.path}: covers other images than {first.path} (e.g. image id {extra[0]}): results for "
                "different image sets (pass --images FILE if some model found nothing on some images)"
            )
        for image_id, size in inp.sizes.items():
            other = first.sizes.get(image_id)
            if other is not None and other != size:
                raise LvisctlError(
                    f"{inp.path}: image {image_id} is {size[0]}x{size[1]} here and {other[0]}x{other[1]} in "
                    f"{first.path}: results for different image sets"
                )


def records_to_detections(records: Sequence[Mapping[str, Any]], size: tuple[int, int], cmap: CategoryMap):
    """One image's full records -> detections (labels contiguous in ``cmap``, masks decoded)."""
    n = len(records)
    if n == 0:
        return {
            "boxes": torch.zeros((0, 4)),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros((0, *size), dtype=torch.bool),
            "mask_boxes": torch.zeros((0, 4)),
        }
    rles = [{"size": list(r["segmentation"]["size"]), "counts": r["segmentation"]["counts"]} for r in records]
    rles = [
        {**r, "counts": r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]} for r in rles
    ]
    # decode gives 0/1 uint8 [H, W, N] in column-major order: viewed as bool [N, H, W] without a copy
    masks = torch.from_numpy(mask_utils.decode(rles).transpose(2, 1, 0)).transpose(1, 2).view(torch.bool)
    boxes = []
    for rec, rle in zip(records, rles, strict=True):
        x, y, w, h = rec["bbox"] if rec.get("bbox") is not None else mask_utils.toBbox(rle).tolist()
        boxes.append([x, y, x + w, y + h])
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor([float(r["score"]) for r in records]),
        "labels": torch.tensor([cmap.index(r["category_id"]) for r in records], dtype=torch.int64),
        "masks": masks,
        "mask_boxes": torch.from_numpy(mask_utils.toBbox(rles)).float(),  # where each mask's pixels are
    }
    if all(r.get("mask_score") is not None for r in records):
        out["mask_scores"] = torch.tensor([float(r["mask_score"]) for r in records])
    return out


@dataclass
class EnsembleOutcome:
    """What :func:`ensemble_to_run_dir` made; ``paths`` empty when stopped by ``max_chunks``."""

    images: int
    detections: int
    seconds: float
    chunks_total: int
    chunks_resumed: int
    complete: bool
    paths: dict[str, Path] = field(default_factory=dict)
    is_main: bool = True
    empty_dropped: int = 0  # detections with an empty mask left out (inputs before the cap, fused masks)


def non_empty(records: Sequence[Mapping[str, Any]], dropped: Any) -> list[Mapping[str, Any]]:
    """``records`` without those whose mask is empty, counted in ``dropped`` (a ``results.DropCount``):
    left out before the fusion's per-image cap, so a real detection takes the slot."""
    from lvisctl.inference.results import is_empty_mask

    kept = [r for r in records if not is_empty_mask(r.get("segmentation"))]
    dropped.empty_masks += len(records) - len(kept)
    return kept


def ensemble_to_run_dir(inputs: Sequence[Path], out: Path, **options: Any) -> EnsembleOutcome:
    """``lvisctl ensemble``: fuse results files of the same images into ``split_paths(out)`` (the
    ``.segm.json`` / ``.bbox.json`` pair ``tta-infer`` writes), registered in ``options['run_dir']``.

    An output that is one of the inputs is refused (``--overwrite`` or not), and the outputs are locked
    for the whole command (a lock file next to them), so two ensembles, or an ensemble and a tta-infer,
    writing one ``--out`` cannot mix or replace each other's files. Options: :func:`_ensemble`'s.
    """
    from lvisctl.inference.results import split_paths
    from lvisctl.inference.runner import remove_partial
    from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs

    paths = split_paths(Path(out).expanduser().resolve())
    refuse_inputs_as_outputs(paths.values(), [*inputs, *joined_bbox_files(inputs), options.get("images")])
    run_dir = options.get("run_dir")
    root = Path(run_dir).expanduser().resolve() if run_dir is not None else paths["segm"].parent
    with output_lock(paths.values()):
        try:
            return _ensemble(inputs, out, **options)
        except Exception:  # a failure (bad input, full disk) leaves no chunk folder; a kill keeps it
            remove_partial(ensemble_partial_dir(root, paths))
            raise


def ensemble_partial_dir(root: Path, paths: Mapping[str, Path]) -> Path:
    """``<run dir or output folder>/.partial/<out>_ensemble``: the resumable chunks of one output."""
    return root / ".partial" / (paths["segm"].name[: -len(".segm.json")] + "_ensemble")


def _to_stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def joined_bbox_files(inputs: Sequence[Path]) -> list[Path]:
    """The ``X.bbox.json`` read with each tta-infer ``X.segm.json`` input (an input too, never an output)."""
    return [
        Path(str(p)[: -len(".segm.json")] + ".bbox.json") for p in inputs if str(p).endswith(".segm.json")
    ]


def _ensemble(
    inputs: Sequence[Path],
    out: Path,
    *,
    weights: Sequence[float] | None = None,
    method: str = "wbf",
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    detections_per_image: int = 300,
    images: Path | None = None,
    run_dir: Path | None = None,
    overwrite: bool = False,
    chunk_size: int = 500,
    max_chunks: int | None = None,
    on_images: Callable[[int], None] | None = None,
) -> EnsembleOutcome:
    """The ensemble itself, under :func:`ensemble_to_run_dir`'s output lock.

    Everything is checked before anything is written; chunks of ``chunk_size`` images are saved to a
    partial folder as they finish (a rerun resumes), shared round robin by ``torchrun`` ranks.
    """
    import time

    from lvisctl.engine.distributed import barrier, init_distributed
    from lvisctl.inference.ensemble_checks import check_iou, check_skip_score, parse_weights
    from lvisctl.inference.ensemble_checks import image_table as results_table
    from lvisctl.inference.results import DropCount, detections_to_records, split_paths
    from lvisctl.inference.runner import (
        EMPTY_DROPPED,
        ImageItem,
        assemble,
        drop_damaged_chunks,
        fingerprint_of,
        finished_chunks,
        plan_chunks,
        prepare_partial_dir,
        write_chunk,
    )
    from lvisctl.rundir import RunDir
    from lvisctl.rundir.io import sha256_file

    start = time.perf_counter()
    if len(inputs) < 1:
        raise LvisctlError("ensemble: give at least one results file")
    if weights is not None and len(weights) != len(inputs):
        raise LvisctlError(f"--weights: {len(weights)} weights for {len(inputs)} results files")
    if weights is not None:
        parse_weights(",".join(map(str, weights)))  # finite and > 0
    check_iou(iou_thr)
    check_skip_score(skip_box_thr)
    if method not in METHODS:
        raise LvisctlError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    run = RunDir(run_dir) if run_dir is not None else None
    out = Path(out).expanduser().resolve()
    paths = split_paths(out)
    for path in paths.values():  # refuse before the slow part
        if run is not None:
            run.output_path(run.relative(path), overwrite=overwrite)
        elif path.exists() and not overwrite:
            raise LvisctlError(f"{path}: already exists (pass --overwrite to replace it)")
    image_table = None
    if images is not None:
        from lvisctl.data.lvis import load_lvis

        image_table = load_lvis(images).images
    table = results_table(images)
    read = [read_results_input(Path(p).expanduser().resolve(), table) for p in inputs]
    check_image_sets(read, image_table, images)
    cat_ids = sorted({int(r["category_id"]) for inp in read for recs in inp.by_image.values() for r in recs})
    cmap = CategoryMap(cat_ids)
    image_ids = sorted(set(image_table) if image_table is not None else set(read[0].by_image))
    sizes = {i: s for inp in reversed(read) for i, s in inp.sizes.items()}
    if image_table is not None:
        sizes.update({i: (int(r["height"]), int(r["width"])) for i, r in image_table.items()})
    settings = {"weights": list(weights or []), "method": method, "iou": iou_thr, "skip": skip_box_thr}
    fingerprint = fingerprint_of(  # the chunk size too: chunk k of another size is other images
        inputs=[sha256_file(f) for inp in read for f in inp.files],
        k=detections_per_image,
        chunk_size=chunk_size,
        **settings,
    )
    partial_dir = ensemble_partial_dir(run.root if run is not None else out.parent, paths)
    chunks = plan_chunks([ImageItem(i, Path()) for i in image_ids], chunk_size)
    dist = init_distributed("cpu")
    if dist.is_main:
        prepare_partial_dir(partial_dir, fingerprint)
        drop_damaged_chunks(partial_dir, chunks, _to_stderr)
    barrier(dist)
    done = finished_chunks(partial_dir)
    pending = [k for k in range(len(chunks)) if k not in done]
    for k in pending[dist.rank :: dist.world_size][:max_chunks]:
        records = []
        dropped = DropCount()
        for item in chunks[k]:
            size = sizes.get(item.image_id, (1, 1))
            members = [
                records_to_detections(non_empty(inp.by_image.get(item.image_id, []), dropped), size, cmap)
                for inp in read
            ]
            fused = fuse_detections(  # spares: a fused mask that votes empty gives its slot to the next
                members,
                size,
                weights=weights,
                method=method,
                iou_thr=iou_thr,
                skip_box_thr=skip_box_thr,
                k=detections_per_image + spare_count(detections_per_image),
            )
            fused = with_cap(fused, detections_per_image)
            records.extend(detections_to_records(item.image_id, fused, cmap, dropped))
        payload = {"image_ids": [item.image_id for item in chunks[k]], "records": records}
        payload[EMPTY_DROPPED] = dropped.empty_masks
        write_chunk(partial_dir, dist.rank, k, payload, fingerprint)
        if on_images is not None:
            on_images(len(chunks[k]))
    barrier(dist)
    outcome = EnsembleOutcome(len(image_ids), 0, 0.0, len(chunks), len(done), False, is_main=dist.is_main)
    if dist.is_main and len(finished_chunks(partial_dir)) == len(chunks):
        counts: dict[str, int] = {}
        outcome.detections = assemble(partial_dir, chunks, out, counts=counts)
        outcome.empty_dropped = counts.get(EMPTY_DROPPED, 0)
        outcome.complete, outcome.paths = True, paths
        if run is not None:
            _register(run, read, paths, images, settings)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _register(run, read: Sequence[ResultsInput], paths: Mapping[str, Path], images, settings) -> None:
    group = paths["segm"].name[: -len(".segm.json")]
    inputs: list[Any] = []
    gt = str(Path(images).expanduser().resolve()) if images is not None else None
    for inp in read:
        for f in inp.files:
            artifact = run.get(run.relative(f))
            inputs.append(artifact if artifact is not None else f)
            if gt is None and artifact is not None and artifact.meta.get("gt"):
                gt = artifact.meta["gt"]
    if images is not None:
        inputs.append(Path(images).expanduser().resolve())
    meta = {"group": group, "ensemble": settings, **({"gt": gt} if gt else {})}
    for iou_type in ("bbox", "segm"):  # segm last: the newest predictions, what evaluate / submit take
        run.register("predictions", paths[iou_type], inputs=inputs, meta={"iou_type": iou_type, **meta})
