"""What a training phase writes besides checkpoints: resolved config, history, loss curve, metrics.jsonl."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.logging import plot_loss_curves
from lvisctl.rundir import Artifact, RunDir, atomic_write_json, atomic_write_text


def save_phase_config(
    run: RunDir, cfg: Any, phase: ckpt_io.Phase, inputs: Sequence[Artifact | str | Path]
) -> None:
    """``config_<phase>.yaml``, registered (kind ``config``) with the training inputs."""
    path = run.output_path(f"config_{phase.name}.yaml", overwrite=True)
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    meta = {"stage": phase.stage, "phase": phase.name}
    run.register("config", path, inputs=inputs, config=cfg.to_dict(), meta=meta)


def finish_phase_logs(
    run: RunDir,
    phase: ckpt_io.Phase,
    history: Sequence[dict[str, float]],
    final_ckpt: Artifact | None,
    log_scale: bool,
) -> Path | None:
    """Loss curve (kind ``plot``), the logged history and metrics.jsonl (kind ``log``), from rank 0."""
    if not history:
        return None
    inputs = [final_ckpt] if final_ckpt else []
    meta = {"stage": phase.stage, "phase": phase.name}
    metrics = run.root / "logs" / f"metrics_{phase.name}.jsonl"
    if metrics.is_file():
        run.register("log", metrics, inputs=inputs, meta={**meta, "what": "metrics"})
    # registered after metrics.jsonl: run.latest("log", phase=...) stays the history json
    log_path = run.output_path(f"logs/train_{phase.name}.json", overwrite=True)
    atomic_write_json(log_path, {"stage": phase.stage, "phase": phase.name, "history": list(history)})
    run.register("log", log_path, inputs=inputs, meta=meta)
    plot_path = run.output_path(f"plots/loss_{phase.name}.png", overwrite=True)
    plot_loss_curves(list(history), plot_path, title=f"{phase} training losses", log_scale=log_scale)
    run.register("plot", plot_path, inputs=inputs, meta={**meta, "what": "loss"})
    return plot_path
