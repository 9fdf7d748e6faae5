"""Evaluation during training and prediction images in TensorBoard (hooks of :mod:`lvisctl.engine.hooks`).

``train.eval_period`` (N iterations, or ``epoch``) runs the model on the validation split (``data.val``,
else the run's ``dataset`` artifact of split ``val``), or on its first ``train.eval_images`` images by
id, through the same :class:`~lvisctl.inference.predictor.Predictor` as ``tta-infer`` (settings from
``inference.*``), and scores it with the official LVIS evaluator (:mod:`lvisctl.evaluation`). It also
evaluates after the last iteration. Under torchrun each rank predicts its shard of the images and rank
0 gathers and scores them. Metrics go to the console, TensorBoard (``val/segm_AP``, ``val/segm_APr``,
..., ``val/bbox_AP``, ``val/bbox_minus_segm_AP``), ``metrics.jsonl`` and the manifest
(``metrics/train_eval_<phase>.json``, kind ``metrics``, meta ``what: train_eval``).

``train.save_best: segm_AP`` (any ``<iou>_<metric>`` key above) keeps ``checkpoints/<phase>_best.pt``,
registered with ``best: true``; ``--checkpoint best`` / ``train.init_from=best`` find it.

Both hooks restore the global RNG states afterwards and put the model back in training mode, so a run
with evaluation trains exactly as one without it, and the evaluation history and best value live in the
checkpoints (a resumed run evaluates at the same iterations and keeps the best of the whole run).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import broadcast_buffers, broadcast_object, gather_to_main
from lvisctl.engine.hooks import Hook
from lvisctl.errors import LvisctlError
from lvisctl.rundir import Artifact, atomic_write_json

if TYPE_CHECKING:
    from lvisctl.engine.trainer import Trainer

IOU_TYPES = ("segm", "bbox")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def parse_period(value: Any) -> tuple[int, bool]:
    """``train.eval_period`` -> (iterations, per_epoch); (0, False) = off."""
    if value in (None, "", 0, False):
        return 0, False
    if str(value).strip().lower() == "epoch":
        return 0, True
    try:
        period = int(value)
    except (TypeError, ValueError):
        period = -1
    if period < 0 or isinstance(value, float) and not float(value).is_integer():
        raise LvisctlError(
            f"config: train.eval_period must be a number of iterations or 'epoch', got {value!r}"
        )
    return period, False


@dataclass
class ValSet:
    """The images an evaluation runs on, and the ground truth it is scored against."""

    source: Artifact | Path  # the val annotation file (manifest entry or path)
    path: Path
    image_ids: list[int]
    image_paths: dict[int, Path]
    gt_path: Path  # the whole file, or a subset file holding exactly ``image_ids``
    tmp: tempfile.TemporaryDirectory | None = None


def require_val_source(cfg: Any, run: Any) -> Artifact | Path:
    """``data.val`` or the run's val ``dataset`` artifact; a one-line error when there is neither."""
    from lvisctl.data.train_data import resolve_val_annotations

    source = resolve_val_annotations(cfg, run)
    if source is None:
        raise LvisctlError(
            "config: train.eval_period / log.image_period need validation data: set data.val=FILE "
            "(or register a dataset of split val in the run directory)"
        )
    return source


def load_val_set(cfg: Any, run: Any, limit: int, *, write_gt: bool = True) -> ValSet:
    """The validation split of ``cfg`` (its first ``limit`` images by id; 0 = all)."""
    from lvisctl.data.lvis import annotation_to_json, load_lvis
    from lvisctl.data.train_data import train_image_root

    source = require_val_source(cfg, run)
    path = run.artifact_path(source) if isinstance(source, Artifact) else Path(source)
    lvis = load_lvis(path, image_root=train_image_root(cfg))
    if not lvis.has_annotations:
        raise LvisctlError(
            f"{path}: has no annotations; evaluation during training needs the val annotations"
        )
    ids = sorted(lvis.images)
    if limit > 0:
        ids = ids[:limit]
    val = ValSet(source, path, ids, {i: lvis.image_path(i) for i in ids}, path)
    if write_gt and len(ids) < len(lvis.images):
        val.tmp = tempfile.TemporaryDirectory(prefix="lvisctl-val-")
        subset = {
            "info": {"description": f"first {len(ids)} images of {path.name}"},
            "images": [lvis.images[i] for i in ids],
            "annotations": [annotation_to_json(a) for i in ids for a in lvis.anns_by_image.get(i, [])],
            "categories": list(lvis.categories.values()),
        }
        val.gt_path = Path(val.tmp.name) / "val_subset.json"
        val.gt_path.write_text(json.dumps(subset, default=_json_default))
    return val


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(type(value).__name__)


def _predictor(trainer: Trainer) -> Any:
    from lvisctl.inference.predictor import Predictor

    icfg = trainer.cfg.inference
    return Predictor(
        trainer.model,
        trainer.info.device,
        scales=list(icfg.scales),
        max_size=int(icfg.max_size),
        detections_per_image=int(icfg.detections_per_image),
        score_thresh=float(icfg.score_thresh),
        mask_thresh=float(icfg.mask_thresh),
        amp=trainer.amp,
        merge_iou=float(icfg.merge_iou),
    )


class _Quiet:
    """Model in eval mode and the global RNG states put back afterwards (evaluation changes no training)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def __enter__(self) -> None:
        self.rng = ckpt_io.capture_rng_state()
        self.trainer.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.trainer.set_train_mode()
        ckpt_io.restore_rng_state(self.rng)


class EvalHook(Hook):
    def __init__(self, period: int, *, per_epoch: bool, images: int, save_best: str = "") -> None:
        self.period, self.per_epoch, self.images = period, per_epoch, images
        self.save_best = save_best
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.val: ValSet | None = None
        self._gt: Any = None
        self._written: Path | None = None  # metrics/train_eval_<phase>.json once written

    @classmethod
    def from_config(cls, cfg: Any) -> EvalHook | None:
        period, per_epoch = parse_period(cfg.train.get("eval_period"))
        save_best = str(cfg.train.get("save_best", "") or "")
        if save_best and save_best not in {f"{t}_{k}" for t in IOU_TYPES for k in AP_KEYS}:
            raise LvisctlError(
                f"config: train.save_best must be <segm|bbox>_<AP|APr|APc|APf|...>, got {save_best!r}"
            )
        if not period and not per_epoch:
            if save_best:
                raise LvisctlError("config: train.save_best needs train.eval_period (iterations or 'epoch')")
            return None
        return cls(
            period, per_epoch=per_epoch, images=int(cfg.train.get("eval_images", 0) or 0), save_best=save_best
        )

    # ------------------------------------------------------------------------------------ hook points
    def before_train(self, trainer: Trainer) -> None:
        self.val = load_val_set(trainer.cfg, trainer.run, self.images, write_gt=trainer.info.is_main)

    def after_step(self, trainer: Trainer) -> None:
        it = trainer.loop.iteration
        if it == trainer.max_iter or (self.period and it % self.period == 0):
            self.evaluate(trainer)

    def after_epoch(self, trainer: Trainer) -> None:
        if self.per_epoch:
            self.evaluate(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.val is not None and self.val.tmp is not None:
            self.val.tmp.cleanup()

    def discard(self, trainer: Trainer) -> None:
        if self._written is not None:
            trainer.run.unregister(trainer.run.relative(self._written))
            self._written.unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "best": dict(self.best) if self.best else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
        self.best = dict(state["best"]) if state.get("best") else None

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        it = trainer.loop.iteration
        if self.history and self.history[-1]["iteration"] == it:
            return self.history[-1]["metrics"]  # after_epoch on the step that already evaluated
        # BatchNorm statistics drift apart per rank between DDP forwards: evaluate rank 0's everywhere
        broadcast_buffers(trainer.model, trainer.info)
        with _Quiet(trainer):
            records = self._predict(trainer)
        metrics = self._score(records) if trainer.info.is_main else None
        metrics = broadcast_object(metrics, trainer.info)
        assert isinstance(metrics, dict)
        self.history.append({"iteration": it, "metrics": metrics})
        self._report(trainer, it, metrics)
        if self.save_best:
            self._maybe_save_best(trainer, it, metrics)
        return metrics

    def _predict(self, trainer: Trainer) -> list[dict[str, Any]]:
        from lvisctl.inference.results import detections_to_records
        from lvisctl.inference.runner import read_image

        assert self.val is not None
        info = trainer.info
        predictor = _predictor(trainer)
        category_map = trainer.data.category_stats.category_map
        mine = self.val.image_ids[info.rank :: info.world_size]
        batch = max(int(trainer.cfg.inference.batch_size), 1)
        records: list[dict[str, Any]] = []
        for start in range(0, len(mine), batch):
            ids = mine[start : start + batch]
            images = [read_image(self.val.image_paths[i]) for i in ids]
            for image_id, dets in zip(ids, predictor.predict_batch(images), strict=True):
                records += detections_to_records(image_id, dets, category_map)
        # rank 0 alone scores: only it receives the others' records (over gloo, in host memory)
        return [r for part in gather_to_main(records, info) for r in part]

    def _score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        from lvisctl.evaluation.lvis_metrics import (
            box_minus_mask_gap,
            evaluate_lvis,
            load_ground_truth,
            load_results_for_eval,
        )
        from lvisctl.inference.results import write_split_results

        assert self.val is not None
        if not records:  # no detection above inference.score_thresh: nothing is found, AP 0
            return {f"{t}_{k}": 0.0 for t in IOU_TYPES for k in ("AP", "APr", "APc", "APf")}
        if self._gt is None:
            self._gt = load_ground_truth(self.val.gt_path)
        with tempfile.TemporaryDirectory(prefix="lvisctl-eval-") as tmp:
            paths = write_split_results(records, Path(tmp) / "val.json")
            by_type = {}
            for iou in IOU_TYPES:
                by_type.update(evaluate_lvis(load_results_for_eval(paths[iou], self._gt), self._gt, (iou,)))
        # lvis-api's -1 = undefined (e.g. no rare category among the evaluated images): left out
        out = {f"{t}_{k}": float(v) for t, m in by_type.items() for k, v in m.metrics.items() if v >= 0}
        gap = box_minus_mask_gap(by_type)
        if gap is not None:
            out["bbox_minus_segm_AP"] = float(gap)
        return out

    def _report(self, trainer: Trainer, it: int, metrics: Mapping[str, float]) -> None:
        if not trainer.info.is_main:
            return
        assert self.val is not None and trainer.logger is not None
        trainer.logger.scalars(it, metrics, prefix="val")

        def show(key: str) -> str:
            return f"{metrics[key]:.3f}" if key in metrics else "n/a"

        gap = f", box-mask gap {show('bbox_minus_segm_AP')}" if "bbox_minus_segm_AP" in metrics else ""
        trainer.logger.message(
            f"{trainer.phase} eval at iteration {it} on {len(self.val.image_ids)} images of {self.val.path}: "
            f"segm AP {show('segm_AP')} (r {show('segm_APr')} c {show('segm_APc')} f {show('segm_APf')}), "
            f"bbox AP {show('bbox_AP')}{gap}"
        )
        self._write_manifest(trainer)

    def _write_manifest(self, trainer: Trainer) -> None:
        assert self.val is not None
        run, phase = trainer.run, trainer.phase
        path = run.output_path(f"metrics/train_eval_{phase.name}.json", overwrite=True)
        atomic_write_json(
            path,
            {
                "phase": phase.name,
                "stage": phase.stage,
                "gt": str(self.val.path),
                "images": len(self.val.image_ids),
                "history": self.history,
                "best": self.best,
            },
        )
        meta = {
            "stage": phase.stage,
            "phase": phase.name,
            "what": "train_eval",
            "iteration": trainer.loop.iteration,
        }
        run.register("metrics", path, inputs=[self.val.source], meta=meta)
        self._written = path

    def _maybe_save_best(self, trainer: Trainer, it: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.save_best)
        if value is None or (self.best and value <= float(self.best["value"])):
            return
        self.best = {"metric": self.save_best, "value": float(value), "iteration": it}
        saved = trainer.save_checkpoint(final=False, best=self.best)
        if saved is not None and trainer.logger is not None:
            trainer.logger.message(f"new best {self.save_best} {value:.4f} at iteration {it}: {saved.path}")
            self._write_manifest(trainer)


class ImageLogHook(Hook):
    """Every ``log.image_period`` iterations: the first ``log.num_images`` val images with the model's
    predictions drawn (masks, boxes, class names) to TensorBoard (``val_images/<image_id>``); rank 0."""

    def __init__(self, period: int, num_images: int, score_thresh: float) -> None:
        self.period, self.num_images, self.score_thresh = period, num_images, score_thresh
        self.val: ValSet | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> ImageLogHook | None:
        log = cfg.get("log", {}) or {}
        period = int(log.get("image_period", 0) or 0)
        if period <= 0:
            return None
        return cls(period, int(log.get("num_images", 4) or 4), float(log.get("image_score_thresh", 0.3)))

    def before_train(self, trainer: Trainer) -> None:
        if trainer.info.is_main:
            self.val = load_val_set(trainer.cfg, trainer.run, self.num_images, write_gt=False)

    def after_step(self, trainer: Trainer) -> None:
        it = trainer.loop.iteration
        if not trainer.info.is_main or not (it % self.period == 0 or it == trainer.max_iter):
            return
        from lvisctl.inference.runner import read_image

        assert self.val is not None and trainer.logger is not None
        names = trainer.data.category_stats.names
        with _Quiet(trainer):
            predictor = _predictor(trainer)
            for image_id in self.val.image_ids:
                image = read_image(self.val.image_paths[image_id])
                dets = predictor.predict(image)
                drawn = draw_detections(image, dets, names, self.score_thresh)
                trainer.logger.image(f"val_images/{image_id}", drawn, it)


def draw_detections(
    image: torch.Tensor,
    dets: Mapping[str, torch.Tensor],
    names: Sequence[str],
    score_thresh: float,
    limit: int = 20,
    min_side: int = 256,
) -> torch.Tensor:
    """uint8 ``[3, H, W]``: masks (alpha 0.5) and labelled boxes of detections scoring >= ``score_thresh``.

    Images smaller than ``min_side`` are enlarged by an integer factor first, so the labels stay readable.
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    factor = max(1, min_side // max(image.shape[-2:]))
    canvas = (image.clamp(0, 1) * 255).to(torch.uint8)
    canvas = canvas.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    keep = (dets["scores"] >= score_thresh).nonzero().flatten()[:limit]
    if len(keep) == 0:
        return canvas
    labels = [int(x) for x in dets["labels"][keep].tolist()]
    colors = [_color(lab) for lab in labels]
    from lvisctl.inference.predictor import full_masks

    masks = full_masks(dets, keep)  # the predictor keeps RoI-level masks: pasted here, for these only
    masks = masks.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    canvas = draw_segmentation_masks(canvas, masks, alpha=0.5, colors=colors)
    scores = dets["scores"][keep].tolist()
    text = [
        f"{names[lab - 1] if 0 < lab <= len(names) else lab} {s:.2f}"
        for lab, s in zip(labels, scores, strict=True)
    ]
    boxes = dets["boxes"][keep].float() * factor
    return draw_bounding_boxes(canvas, boxes, labels=text, colors=colors, width=1)


def _color(label: int) -> tuple[int, int, int]:
    """A stable colour per class (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)
