"""``lvisctl analyze masks``: oracle-box mask quality of one or more checkpoints on an LVIS split.

For each checkpoint: the mask branch on every ground-truth box (``mask_quality.oracle_box_records``), the
IoU table per frequency group and area-ratio bin, the oracle-box mask AP from the LVIS evaluator, then
one metrics json and one PNG (mean mask IoU per area-ratio bin, one curve per checkpoint), both
registered in the run directory with the checkpoints and the ground truth as inputs.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lvisctl.analysis.mask_quality import (
    RATIO_BINS,
    MaskRecord,
    oracle_box_records,
    records_to_json,
    summarize,
)
from lvisctl.data.lvis import LvisData, load_lvis
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from lvisctl.rundir.io import atomic_output, atomic_write_json
from lvisctl.rundir.outputs import refuse_inputs_as_outputs

OUT_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class CheckpointAnalysis:
    label: str  # short name shown in tables and the plot legend
    checkpoint: Path
    table: dict[str, Any]  # summarize()'s output
    oracle_ap: dict[str, float]  # LVIS segm metrics of the oracle-box results
    num_instances: int


def oracle_mask_predictor(
    model: torch.nn.Module, data: LvisData, device: torch.device, scale: int, max_size: int
) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(image_id, boxes, labels) -> bool[N, H, W]``: the model's mask branch on given boxes.

    The image is resized as at test time; the RoI masks (box-relative) are pasted with the original
    boxes at the original size and thresholded at 0.5, as the predictor does for detections.
    """
    from lvisctl.inference.postprocess import paste_masks
    from lvisctl.inference.predictor import resize_image
    from lvisctl.inference.runner import read_image

    @torch.no_grad()
    def predict(image_id: int, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        image = read_image(data.image_path(image_id))
        h, w = image.shape[-2:]
        inp = resize_image(image.to(device), scale, max_size)
        ih, iw = inp.shape[-2:]
        factor = torch.tensor([iw / w, ih / h, iw / w, ih / h])
        features, _ = model.extract_features([inp])
        probs = model.predict_masks(
            features, [(boxes * factor).to(device)], [labels.to(device)], [(ih, iw)], paste=False
        )[0]
        # torchvision's paste arithmetic, each mask only inside its box (no [N, H, W] float tensor)
        return paste_masks(probs.float().cpu(), boxes, (int(h), int(w)), 0.5)[0]

    return predict


def _oracle_ap(results: list[dict[str, Any]], gt_path: Path) -> dict[str, float]:
    """LVIS segm metrics of the oracle-box results (empty dict when there is nothing to score)."""
    from lvisctl.evaluation.lvis_metrics import evaluate_lvis, load_ground_truth, load_results_for_eval

    if not results:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "oracle_box_results.segm.json"
        path.write_text(json.dumps(results))
        gt = load_ground_truth(gt_path)
        loaded = load_results_for_eval(path, gt)
        return dict(evaluate_lvis(loaded, gt, ("segm",))["segm"].metrics)


def analyze_checkpoint(
    checkpoint: Path,
    data: LvisData,
    *,
    label: str,
    device: torch.device,
    scale: int | None = None,
    max_size: int | None = None,
    max_images: int | None = None,
    on_image: Callable[[], None] | None = None,
) -> tuple[CheckpointAnalysis, list[MaskRecord]]:
    """The analysis of one checkpoint and its per-instance records. The test scale defaults to the
    checkpoint's first ``inference.scales`` entry and its ``inference.max_size``, as ``tta-infer`` uses."""
    from lvisctl.inference.category_check import check_categories
    from lvisctl.inference.factory import load_checkpoint_model

    model, stats, cfg = load_checkpoint_model(checkpoint, device)
    # the same table (ids and names) as tta-infer requires: matching by id alone scores swapped names
    check_categories(stats, data.categories, json_path=data.path, checkpoint=checkpoint)
    scale = int(scale or cfg.inference.scales[0])
    max_size = int(max_size or cfg.inference.max_size)
    image_ids = sorted(i for i, anns in data.anns_by_image.items() if anns)[:max_images]
    predict = oracle_mask_predictor(model, data, device, scale, max_size)
    records, results = oracle_box_records(data, image_ids, stats.category_map, predict, on_image=on_image)
    if not records:
        raise LvisctlError(f"{data.path}: no annotated instance of the checkpoint's categories to analyse")
    return CheckpointAnalysis(
        label=label,
        checkpoint=checkpoint,
        table=summarize(records),
        oracle_ap=_oracle_ap(results, data.path),
        num_instances=len(records),
    ), records


def plot_iou_by_ratio(analyses: Sequence[CheckpointAnalysis], path: Path) -> None:
    """Mean mask IoU (solid) and Boundary IoU (dashed) per area-ratio bin, one colour per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b[0] for b in RATIO_BINS]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for a in analyses:
        for key, style in (("mask_iou", "-o"), ("boundary_iou", "--s")):
            ys = [a.table["all"][b][key] for b in bins]
            ax.plot(
                bins,
                [float("nan") if y is None else y for y in ys],
                style,
                label=f"{a.label} {key.replace('_', ' ')}",
            )
    ax.set_xlabel("GT mask area / box area")
    ax.set_ylabel("mean IoU with oracle boxes")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


@dataclass
class MaskAnalysisOutcome:
    analyses: list[CheckpointAnalysis]
    images: Path  # the ground truth scored
    json_path: Path  # analysis/<out_stem>.json (the .png beside it)


@dataclass
class MaskAnalysisJob:
    """``lvisctl analyze masks``: analyse every checkpoint; write ``analysis/<out_stem>.json`` + ``.png``
    and register both.

    The inputs are resolved as ``tta-infer`` resolves them: ``checkpoint`` (paths or artifact names;
    default the run's final) by :func:`lvisctl.inference.checkpoints.resolve_checkpoint`, ``images``
    defaults to the run's val dataset (registered, else the remembered ``data.val``) and ``image_root`` to
    the remembered ``data.image_root`` (``notify`` says which remembered value is used). Output paths are
    claimed before the slow part, so an existing file is refused up front.
    """

    run_dir: Path
    checkpoint: Sequence[Path] | None = None
    images: Path | None = None
    image_root: Path | None = None
    device: str | None = None
    scale: int | None = None  # default: each checkpoint's inference.scales[0]
    max_size: int | None = None
    max_images: int | None = None
    out_stem: str = "mask_quality"
    overwrite: bool = False
    on_start: Callable[[int], None] | None = None
    on_image: Callable[[], None] | None = None
    notify: Callable[[str], None] | None = None

    def _say(self, line: str) -> None:
        if self.notify is not None:
            self.notify(line)

    def _val_images(self, run: RunDir) -> Path:
        from lvisctl.data.remembered import remembered_path

        found = run.find("dataset", split="val")
        if found:
            return run.resolve(found[-1])
        if "val" in run.datasets():
            return remembered_path(self.run_dir, "val", "--images", self._say)
        raise LvisctlError(f"{run.manifest_path}: no val dataset recorded; pass --images FILE")

    def run(self) -> MaskAnalysisOutcome:
        from lvisctl.data.remembered import default_image_root
        from lvisctl.inference.checkpoints import resolve_checkpoint

        run = RunDir(self.run_dir)
        resolved = (resolve_checkpoint(run, c) for c in (self.checkpoint or [None]))
        checkpoints = [(r.input, r.path) for r in resolved]
        images = self.images if self.images is not None else self._val_images(run)
        image_root = default_image_root(self.run_dir, self.image_root, self._say)
        out_stem = self.out_stem
        if not OUT_STEM.fullmatch(out_stem) or ".." in out_stem:  # a name, never a path (refused up front)
            raise LvisctlError(
                f"--name {out_stem!r}: a plain file name is needed "
                "(letters, digits, '_', '-', '.'; no folders)"
            )
        json_path = run.output_path(f"analysis/{out_stem}.json", overwrite=self.overwrite)
        png_path = run.output_path(f"analysis/{out_stem}.png", overwrite=self.overwrite)
        refuse_inputs_as_outputs([json_path, png_path], [images, *(path for _, path in checkpoints)])
        data = load_lvis(images, image_root=image_root)
        if not data.has_annotations:
            raise LvisctlError(f"{images}: has no annotations; the analysis needs ground-truth masks")
        dev = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.on_start is not None:
            annotated = sum(1 for anns in data.anns_by_image.values() if anns)
            self.on_start(len(checkpoints) * min(annotated, self.max_images or annotated))
        analyses = []
        for i, (_, path) in enumerate(checkpoints):
            label = Path(path).stem if len(checkpoints) > 1 else "model"
            if sum(Path(p).stem == Path(path).stem for _, p in checkpoints) > 1:
                label = f"{i + 1}:{Path(path).stem}"
            analysis, _records = analyze_checkpoint(
                Path(path),
                data,
                label=label,
                device=dev,
                scale=self.scale,
                max_size=self.max_size,
                max_images=self.max_images,
                on_image=self.on_image,
            )
            analyses.append(analysis)
        atomic_write_json(json_path, self._payload(analyses, images, checkpoints))
        plot_iou_by_ratio(analyses, png_path)
        inputs = [c for c, _ in checkpoints] + [images]
        run.register("metrics", json_path, inputs=inputs, meta={"analysis": "mask_quality"})
        run.register("plot", png_path, inputs=[json_path], meta={"analysis": "mask_quality"})
        return MaskAnalysisOutcome(analyses, images, json_path)

    def _payload(
        self, analyses: Sequence[CheckpointAnalysis], images: Path, checkpoints: Sequence[tuple[Any, Path]]
    ) -> dict[str, Any]:
        return {
            "scored": {"gt": str(images), "checkpoints": [str(p) for _, p in checkpoints]},
            "bins": [b[0] for b in RATIO_BINS],
            "test_scale": self.scale or "inference.scales[0] of each checkpoint",
            "checkpoints": [
                {
                    "label": a.label,
                    "checkpoint": str(a.checkpoint),
                    "instances": a.num_instances,
                    "oracle_box_mask_ap": a.oracle_ap,
                    "table": a.table,
                }
                for a in analyses
            ],
        }


__all__ = [
    "CheckpointAnalysis",
    "MaskAnalysisJob",
    "MaskAnalysisOutcome",
    "analyze_checkpoint",
    "records_to_json",
]
