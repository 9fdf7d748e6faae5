"""``lvisctl runs show --summary`` and ``runs compare``: per training phase, its checkpoint and the AP
``evaluate`` measured on it, read from the run's manifest (metrics json -> predictions -> checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lvisctl.rundir import Artifact, RunDir
from lvisctl.rundir.io import read_json


@dataclass
class PhaseSummary:
    phase: str
    checkpoint: str  # path in the run dir
    iteration: int | None
    final: bool
    segm_ap: float | None = None  # mask AP of the newest evaluation of that checkpoint
    bbox_ap: float | None = None
    metrics: str | None = None  # the metrics json those come from


def phase_summaries(run: RunDir) -> list[PhaseSummary]:
    """One row per training phase (in the order the phases started): its final checkpoint (else the
    newest), and the newest ``evaluate`` result of predictions made with that checkpoint."""
    artifacts = run.artifacts()
    newest: dict[str, Artifact] = {}
    for a in artifacts:
        if a.kind != "checkpoint" or a.meta.get("best"):
            continue
        phase = str(a.meta.get("phase") or f"stage{a.meta.get('stage', '?')}")
        if phase not in newest or a.meta.get("final") or not newest[phase].meta.get("final"):
            newest[phase] = a
    scores = _scores_by_checkpoint(run, artifacts)
    rows = []
    for phase, ckpt in newest.items():
        row = PhaseSummary(phase, ckpt.path, ckpt.meta.get("iteration"), bool(ckpt.meta.get("final")))
        if ckpt.path in scores:
            row.metrics, row.segm_ap, row.bbox_ap = scores[ckpt.path]
        rows.append(row)
    return rows


def _scores_by_checkpoint(run: RunDir, artifacts: list[Artifact]) -> dict[str, tuple[str, Any, Any]]:
    made_with = {
        a.path: a.meta.get("checkpoint")
        for a in artifacts
        if a.kind == "predictions" and not a.meta.get("purpose") and not a.meta.get("checkpoints")
    }
    out: dict[str, tuple[str, Any, Any]] = {}
    for a in artifacts:  # manifest order: a newer evaluation of the same checkpoint replaces an older one
        if a.kind != "metrics" or "iou_types" not in a.meta or "table" in a.meta:
            continue
        ckpts = {made_with.get(i.get("path")) for i in a.inputs} - {None}
        if len(ckpts) != 1 or not run.path_of(a.path).is_file():
            continue
        data = read_json(run.path_of(a.path), expect=dict)
        out[ckpts.pop()] = (a.path, _ap(data, "segm"), _ap(data, "bbox"))
    return out


def _ap(metrics: dict[str, Any], iou_type: str) -> float | None:
    value = (metrics.get(iou_type) or {}).get("AP")
    return float(value) if isinstance(value, (int, float)) else None
