"""The LVIS evaluation used during training: the ``evaluate_fn`` that ``lvisctl train`` injects into the
engine's :class:`~lvisctl.engine.eval_hook.EvalHook`, and its manifest record.

``train.eval_period`` (N iterations, or ``epoch``) runs the model on the validation split (``data.val``,
else the run's ``dataset`` artifact of split ``val``), or on its first ``train.eval_images`` images by
id, through the same :class:`~lvisctl.inference.predictor.Predictor` as ``tta-infer`` (settings from
``inference.*``), and scores it with the official LVIS evaluator (:mod:`lvisctl.evaluation`). Under torchrun
each rank predicts its shard of the images and rank 0 gathers and scores them. Metrics go to the console,
TensorBoard (``val/segm_AP``, ``val/segm_APr``, ..., ``val/bbox_AP``, ``val/bbox_minus_segm_AP``),
``metrics.jsonl`` (the engine's hook) and the manifest (``metrics/train_eval_<phase>.json``, kind
``metrics``, meta ``what: train_eval``: this module).

``train.save_best: segm_AP`` (any ``<iou>_<metric>`` key above) keeps ``checkpoints/<phase>_best.pt``
(the engine's :class:`~lvisctl.engine.eval_hook.BestCheckpointHook`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lvisctl.config.checks import BEST_METRICS, IOU_TYPES
from lvisctl.engine.distributed import DistInfo, gather_to_main
from lvisctl.engine.eval_hook import BestCheckpointHook, EvalHook, OncePerEvaluationHook
from lvisctl.engine.hooks import TrainerView
from lvisctl.errors import LvisctlError
from lvisctl.rundir import Artifact, atomic_write_json

# the metric names train.save_best may pick: the config checks' one list
METRICS = BEST_METRICS


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


def make_predictor(model: nn.Module, trainer: Any) -> Any:
    """The predictor of ``inference.*`` (one scale set, no TTA) on the trainer's device and AMP setting:
    the one factory's plain predictor, so training scores the model as ``tta-infer --tta plain`` would."""
    from lvisctl.inference.factory import plain_predictor

    return plain_predictor(model, trainer.cfg.inference, trainer.info.device, trainer.amp)


class LvisEvaluator(OncePerEvaluationHook):
    """``evaluate_fn`` for the engine's EvalHook: the model's segm and bbox APs on the val split.

    As a hook it loads the val set (``before_train``), writes the manifest record after each evaluation
    (after the best-checkpoint hook, so the record holds the new best), cleans up and discards. ``images``:
    the first N val images by id (0 = all)."""

    def __init__(self, images: int = 0) -> None:
        self.images = images
        self.val: ValSet | None = None
        self._trainer: Any = None  # what predict needs of the trainer: cfg, info, amp, data
        self._gt: Any = None
        self._written: Path | None = None  # metrics/train_eval_<phase>.json once written

    # ------------------------------------------------------------------------------------ evaluate_fn
    def __call__(self, model: nn.Module) -> dict[str, float]:
        records = self.predict(model)
        return self.score(records) if self._info.is_main else {}

    @property
    def _info(self) -> DistInfo:
        assert self._trainer is not None, "LvisEvaluator: bind(trainer) first (before_train does)"
        return self._trainer.info

    def bind(self, trainer: Any) -> None:
        """Take the device, AMP setting, inference settings and category map from ``trainer``."""
        self._trainer = trainer

    def predict(self, model: nn.Module) -> list[dict[str, Any]]:
        """This rank's share of the val images predicted; on rank 0 every rank's records."""
        from lvisctl.inference.results import detections_to_records
        from lvisctl.inference.runner import read_image

        assert self.val is not None
        trainer, info = self._trainer, self._info
        predictor = make_predictor(model, trainer)
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

    def score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        """The official LVIS metrics of ``records`` against the val set (rank 0)."""
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

    def summary(self, metrics: Mapping[str, float]) -> str:
        """The console line's tail: ``on N images of FILE: segm AP .. (r c f), bbox AP ..``."""

        def show(key: str) -> str:
            return f"{metrics[key]:.3f}" if key in metrics else "n/a"

        gap = f", box-mask gap {show('bbox_minus_segm_AP')}" if "bbox_minus_segm_AP" in metrics else ""
        where = f" on {len(self.val.image_ids)} images of {self.val.path}" if self.val is not None else ""
        return (
            f"{where}: segm AP {show('segm_AP')} (r {show('segm_APr')} c {show('segm_APc')} "
            f"f {show('segm_APf')}), bbox AP {show('bbox_AP')}{gap}"
        )

    # ------------------------------------------------------------------------------------ hook points
    def before_train(self, trainer: TrainerView) -> None:
        self.bind(trainer)
        self.val = load_val_set(trainer.cfg, trainer.run, self.images, write_gt=trainer.info.is_main)

    def after_evaluation(self, trainer: TrainerView) -> None:
        history = [{"iteration": i, "metrics": m} for i, m in trainer.metrics.history("val")]
        self.write_record(trainer, history, trainer.metrics.latest("best"))

    def write_record(
        self, trainer: TrainerView, history: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None
    ) -> None:
        """``metrics/train_eval_<phase>.json`` (kind ``metrics``): every evaluation of the run and the best
        (rank 0)."""
        if not trainer.info.is_main:
            return
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
                "history": [dict(h) for h in history],
                "best": dict(best) if best else None,
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

    def after_train(self, trainer: TrainerView) -> None:
        if self.val is not None and self.val.tmp is not None:
            self.val.tmp.cleanup()

    def discard(self, trainer: TrainerView) -> None:
        if self._written is not None:
            trainer.run.unregister(trainer.run.relative(self._written))
            self._written.unlink(missing_ok=True)


class LvisEvalHook(EvalHook):
    """The LVIS evaluation, its best checkpoint and its manifest record as one hook, for a hand-made hook
    list (``train(..., hooks=[...])``); :func:`lvisctl.training.default_hooks` uses the three parts
    (EvalHook + BestCheckpointHook + LvisEvaluator). Its state (``history``, ``best``) is saved under its
    class name. ``_predict`` / ``_score`` are the steps a test stand-in replaces."""

    def __init__(self, period: int, *, per_epoch: bool = False, images: int = 0, save_best: str = "") -> None:
        self.evaluator = LvisEvaluator(images)
        super().__init__(period, self.evaluator, per_epoch=per_epoch, summary=self.evaluator.summary)
        self.images = images
        self.save_best = save_best
        self.best_hook = BestCheckpointHook(save_best) if save_best else None

    @property
    def val(self) -> ValSet | None:
        return self.evaluator.val

    @val.setter
    def val(self, value: ValSet | None) -> None:
        self.evaluator.val = value

    @property
    def best(self) -> dict[str, Any] | None:
        return self.best_hook.best if self.best_hook is not None else None

    def before_train(self, trainer: TrainerView) -> None:
        super().before_train(trainer)
        self.evaluator.before_train(trainer)

    def run_evaluation(self, trainer: TrainerView) -> Mapping[str, float]:
        records = self._predict(trainer)
        return self._score(records) if trainer.info.is_main else {}

    def _predict(self, trainer: Any) -> list[dict[str, Any]]:
        self.evaluator.bind(trainer)
        return self.evaluator.predict(trainer.model)

    def _score(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return self.evaluator.score(records)

    def evaluate(self, trainer: TrainerView) -> dict[str, float]:
        done = len(self.history)
        metrics = super().evaluate(trainer)
        if len(self.history) > done:  # a new evaluation (not the repeat of an after_epoch)
            if self.best_hook is not None:
                self.best_hook.check(trainer)
            self.evaluator.write_record(trainer, self.history, self.best)
        return metrics

    def after_train(self, trainer: TrainerView) -> None:
        self.evaluator.after_train(trainer)

    def discard(self, trainer: TrainerView) -> None:
        self.evaluator.discard(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best": dict(self.best) if self.best else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self.best_hook is not None:
            self.best_hook.load_state_dict(state)
