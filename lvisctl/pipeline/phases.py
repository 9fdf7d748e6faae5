"""Phases of a pipeline run: train (or resume, or skip) -> predict on val -> evaluate -> comparison row.

Every step calls the same layer function as its own command (``data synth``, ``train`` /
``finetune-bags``, ``tta-infer``, ``evaluate``) and finds its inputs in the run's manifest, so a re-run
continues where the last one stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvisctl.rundir import RunDir
from lvisctl.rundir.manifest import Artifact

Report = Callable[[str], None]


@dataclass(frozen=True)
class PhaseSpec:
    """One training phase and the table row it becomes."""

    label: str  # row of the comparison table
    stage: int  # 1 = representation learning, 2 = fine-tuning from the stage-1 checkpoint
    phase: str  # checkpoint phase name (checkpoints/<phase>_final.pt)
    config: str | Path  # packaged config name or a yaml path
    overrides: tuple[str, ...] = ()


# The demo evaluates stage 1 mid-run (and at the end) on 50 val images and keeps the best checkpoint, so the
# README shows the AP curve (`lvisctl demo --iters N` moves the mid-run point to N / 2).
DEMO_EVAL = ("train.eval_period=300", "train.eval_images=50", "train.save_best=segm_AP")
DEMO_STAGE1 = PhaseSpec("stage 1", 1, "stage1", "demo/stage1", overrides=DEMO_EVAL)
DEMO_STAGE2 = PhaseSpec("stage 2 (GS + HM)", 2, "stage2", "demo/stage2")
ABLATION_ROWS = {  # Table 2 on synthetic LVIS, the rows after stage 1 (benchmarks/stage2_ablation.py)
    "GS": PhaseSpec("GS (finetune-bags)", 2, "finetune_bags", "demo/finetune_bags"),
    "GS + HM": PhaseSpec("GS + HM (train --stage 2)", 2, "stage2", "demo/stage2"),
    "GS + HM + MS": PhaseSpec("GS + HM + MS", 2, "stage2_ms", "demo/stage2_ms"),
}


@dataclass
class PipelineResult:
    rows: dict[str, dict] = field(default_factory=dict)  # label -> comparison row (phase_row)
    train_seconds: dict[str, float] = field(default_factory=dict)  # phases trained in this call
    metrics_files: dict[str, Path] = field(default_factory=dict)


def ensure_dataset(run: RunDir, preset: str, seed: int, report: Report = print) -> Path:
    """The run's registered synthetic val json; generates the data (``lvisctl data synth``) when missing."""
    from lvisctl.data.synth import generate_synthetic_lvis

    found = {s: run.find("dataset", split=s) for s in ("train", "val")}
    if not (found["train"] and found["val"]):
        # A dataset folder without manifest entries is a leftover of an interrupted run: replace it.
        generate_synthetic_lvis(run=run, preset=preset, seed=seed, overwrite=True)
        found = {s: run.find("dataset", split=s) for s in ("train", "val")}
    else:
        report(f"synthetic data already in {run.relative(run.artifact_path(found['val'][-1]))}")
    return run.resolve(found["val"][-1])


def _phase(spec: PhaseSpec):
    from lvisctl.engine.checkpoint import Phase

    return Phase(spec.stage, spec.phase)


def phase_finished(run: RunDir, spec: PhaseSpec) -> bool:
    from lvisctl.engine.checkpoint import latest_checkpoint

    return latest_checkpoint(run, _phase(spec), final=True) is not None


def load_phase_config(spec: PhaseSpec, extra: Sequence[str] = ()):
    """The phase's resolved config (fails fast, before any training, on a bad key or value)."""
    from lvisctl.config import load_config

    return load_config(spec.config, [*spec.overrides, *extra])


def train_phase(run: RunDir, spec: PhaseSpec, cfg: Any, report: Report = print) -> float | None:
    """Train ``spec`` (resume when it has checkpoints); its wall seconds, None when it had finished."""
    from lvisctl.engine.checkpoint import latest_checkpoint
    from lvisctl.training import train

    if phase_finished(run, spec):
        report(f"already trained: {latest_checkpoint(run, _phase(spec), final=True).path}")
        return None
    start = time.perf_counter()
    resume = latest_checkpoint(run, _phase(spec)) is not None
    train(cfg, run.root, stage=spec.stage, phase=spec.phase, resume=resume)
    return time.perf_counter() - start


def _final_checkpoint(run: RunDir, spec: PhaseSpec) -> Artifact:
    from lvisctl.engine.checkpoint import latest_checkpoint
    from lvisctl.errors import LvisctlError

    ckpt = latest_checkpoint(run, _phase(spec), final=True)
    if ckpt is None:
        raise LvisctlError(f"{run.manifest_path}: no final {spec.phase} checkpoint (train it first)")
    return ckpt


def _made_from(artifact: Artifact, checkpoint: Artifact) -> bool:
    return any(i.get("sha256") == checkpoint.sha256 for i in artifact.inputs)


def ensure_predictions(run: RunDir, val_json: Path, spec: PhaseSpec, report: Report = print) -> None:
    """Predictions of the phase's final checkpoint on ``val_json`` (``lvisctl tta-infer``), made once."""
    from lvisctl.inference.predict_job import PredictJob

    ckpt = _final_checkpoint(run, spec)
    if any(_made_from(a, ckpt) for a in run.find("predictions", gt=str(val_json), iou_type="segm")):
        report(f"predictions of {ckpt.path} already made")
        return
    PredictJob(run.root, val_json, checkpoint=run.resolve(ckpt), overwrite=True).run()


def evaluate_phase(
    run: RunDir, val_json: Path, spec: PhaseSpec, thin: set[int], *, prefix: str
) -> tuple[dict, Path, float]:
    """``lvisctl evaluate`` of the phase's predictions (segm + bbox) into ``metrics/<prefix>_<phase>.json``;
    returns (comparison row, metrics file, segm AP)."""
    from lvisctl.evaluation.pipeline import run_evaluate
    from lvisctl.evaluation.report import phase_row

    ckpt = _final_checkpoint(run, spec)
    segm = next(a for a in reversed(run.find("predictions", iou_type="segm")) if _made_from(a, ckpt))
    bbox = run.latest("predictions", iou_type="bbox", group=segm.meta["group"])
    out = run.root / "metrics" / f"{prefix}_{spec.phase}.json"
    outcome = run_evaluate(None, run_dir=run.root, out=out, overwrite=True, predictions=(segm, bbox))
    row = phase_row(outcome.metrics, outcome.by_type["segm"].per_category_ap, thin)
    return row, out, outcome.metrics["segm"]["AP"]


def run_phases(
    run: RunDir,
    specs: Sequence[PhaseSpec],
    *,
    preset: str,
    seed: int,
    prefix: str,
    extra_overrides: dict[str, Sequence[str]] | None = None,
    heading: Report = print,
    report: Report = print,
) -> PipelineResult:
    """Data, then each phase's training in order, then predictions and evaluation of every phase.

    ``extra_overrides``: phase name -> overrides added to that phase's config. All configs are loaded
    (and so checked) before anything runs.
    """
    from lvisctl.data.lvis import load_lvis
    from lvisctl.evaluation.thin_objects import thin_categories

    extra = extra_overrides or {}
    configs = {s.phase: load_phase_config(s, extra.get(s.phase, ())) for s in specs}
    result = PipelineResult()
    steps = len(specs) + 3
    heading(f"1/{steps} synthetic LVIS")
    val_json = ensure_dataset(run, preset, seed, report)
    for i, spec in enumerate(specs, start=2):
        heading(f"{i}/{steps} {spec.label}: training ({spec.config})")
        seconds = train_phase(run, spec, configs[spec.phase], report)
        if seconds is not None:
            result.train_seconds[spec.label] = seconds
    heading(f"{steps - 1}/{steps} inference on the synthetic val split")
    for spec in specs:
        ensure_predictions(run, val_json, spec, report)
    heading(f"{steps}/{steps} LVIS evaluation")
    thin = thin_categories(load_lvis(val_json).annotations())
    for spec in specs:
        row, out, ap = evaluate_phase(run, val_json, spec, thin, prefix=prefix)
        report(f"{spec.label}: segm AP {100 * ap:.1f}, written to {run.relative(out)}")
        result.rows[spec.label], result.metrics_files[spec.label] = row, out
    return result
