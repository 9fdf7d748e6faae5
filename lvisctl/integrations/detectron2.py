"""``LvisctlLVISEvaluator``: lvisctl's LVIS evaluator behind detectron2's ``DatasetEvaluator`` interface.

A drop-in for ``detectron2.evaluation.LVISEvaluator`` (same ``evaluate()`` keys: ``{"bbox": {"AP", "AP50",
"AP75", "APs", "APm", "APl", "APr", "APc", "APf"}, "segm": {...}}``, in percent as detectron2 reports)::

    from lvisctl.integrations.detectron2 import LvisctlLVISEvaluator
    evaluator = LvisctlLVISEvaluator("lvis_v1_val")       # a registered dataset, or a path to the json
    inference_on_dataset(model, val_loader, evaluator)

Predicted classes are detectron2's contiguous indices (0..K-1), mapped to the LVIS ids in increasing order
as detectron2's LVIS loader does. Under detectron2's multi-GPU test (a ``torch.distributed`` process group)
``evaluate()`` gathers every rank's records to rank 0, which scores them all and returns the metrics; the
other ranks return None, as detectron2's own ``LVISEvaluator`` (``comm.gather(..., dst=0)``) does.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from lvisctl.integrations.lvis_eval import evaluate_records, image_records

try:  # the base class when detectron2 is installed; the interface is three methods either way
    from detectron2.evaluation import DatasetEvaluator as _Base  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - detectron2 is not on the package registry
    _Base = object

D2_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _json_file(dataset: str) -> Path:
    path = Path(dataset)
    if path.suffix == ".json":
        return path
    from detectron2.data import MetadataCatalog  # type: ignore[import-not-found]

    return Path(MetadataCatalog.get(dataset).json_file)


class LvisctlLVISEvaluator(_Base):
    def __init__(self, dataset_name: str, tasks: tuple[str, ...] | None = None, *_args: Any, **_kw: Any):
        import json

        self.json_file = _json_file(dataset_name)
        cats = json.loads(self.json_file.read_text())["categories"]
        self.cat_ids = sorted(int(c["id"]) for c in cats)
        self.tasks = tuple(tasks) if tasks else None
        self.reset()

    def reset(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._has_masks = False

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            inst = out["instances"].to("cpu")
            boxes = inst.pred_boxes.tensor
            masks = inst.pred_masks if inst.has("pred_masks") else None
            self._has_masks = self._has_masks or masks is not None
            cats = [self.cat_ids[c] for c in inst.pred_classes.tolist()]
            self._records += image_records(inp["image_id"], boxes, inst.scores, cats, masks)

    def evaluate(self) -> OrderedDict | None:
        records, has_masks = _gather_records(self._records, self._has_masks)
        if records is None:  # not rank 0: its records went to rank 0, which scores them all
            return None
        self._records, self._has_masks = records, has_masks
        tasks = self.tasks or (("bbox", "segm") if self._has_masks else ("bbox",))
        metrics = evaluate_records(self._records, self.json_file, tasks)
        return OrderedDict((t, {k: 100.0 * metrics[t][k] for k in D2_KEYS}) for t in tasks)


def _gather_records(records: list[dict[str, Any]], has_masks: bool) -> tuple[list[Any] | None, bool]:
    """All ranks' records on rank 0 (None elsewhere); the local ones in one process."""
    import torch.distributed as dist

    from lvisctl.engine.distributed import DistInfo, gather_to_main

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records, has_masks
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())
    parts = gather_to_main((records, has_masks), info)
    if not info.is_main:
        return None, has_masks
    return [r for part, _ in parts for r in part], any(m for _, m in parts)
