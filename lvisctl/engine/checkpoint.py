"""Training checkpoints: plain dicts written atomically, registered in the manifest, loaded weights-only.

A checkpoint holds everything an exact resume needs and nothing that needs pickled code, so
``torch.load(path, weights_only=True)`` reads it:

``model`` (state dict), ``optimizer``, ``scheduler`` (the lr schedule's parameters), ``scaler`` (AMP),
``iteration`` (optimizer steps done), ``epoch`` and ``epoch_position`` (batches of that epoch consumed,
per process) to restart the data stream mid-epoch, ``rng`` (torch / CUDA / numpy / Python generator
states as tensors), ``history`` (logged losses, for the loss curve), ``config`` (resolved config dict),
``category_stats`` (``CategoryStats.to_dict()``, to rebuild the model without the training file),
``stage`` and ``final``.

Files are ``checkpoints/<phase>_iter<NNNNNNN>.pt`` and ``checkpoints/<phase>_final.pt`` (phase
``stage1``, ``stage2`` or ``finetune_bags``), registered as kind ``checkpoint`` with meta
``{"stage", "phase", "iteration", "epoch", "final"}``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvisctl.errors import LvisctlError
from lvisctl.rundir import Artifact, RunDir, atomic_output

FORMAT = "lvisctl-checkpoint"
REQUIRED_KEYS = ("model", "config", "category_stats", "stage", "iteration")


@dataclass(frozen=True)
class Phase:
    """A training phase: its stage number (1 representation learning, 2 fine-tuning) and a name used for
    file names and manifest lookups. Two stage-2 recipes (``train --stage 2`` and ``finetune-bags``)
    differ by name, so both can live in one run directory."""

    stage: int
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"stage{self.stage}")

    def __str__(self) -> str:
        default = self.name == f"stage{self.stage}"
        return f"stage {self.stage}" if default else f"{self.name} (stage {self.stage})"


def as_phase(phase: Phase | int) -> Phase:
    return phase if isinstance(phase, Phase) else Phase(int(phase))


def checkpoint_relpath(phase: Phase | int, iteration: int, final: bool) -> str:
    name = as_phase(phase).name
    return f"checkpoints/{name}_final.pt" if final else f"checkpoints/{name}_iter{iteration:07d}.pt"


# ---------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Every global generator a training step may draw from, as tensors and ints (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": float(np_state[4]),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_cached_gauss"]),
        )
    )
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda_states])


# ------------------------------------------------------------------------------------------ save/load
def save_checkpoint(
    run: RunDir,
    state: dict[str, Any],
    *,
    inputs: Sequence[Artifact | str | Path] = (),
) -> Artifact:
    """Write ``state`` atomically (a kill mid-write leaves the previous file intact) and register it."""
    stage, iteration, final = int(state["stage"]), int(state["iteration"]), bool(state["final"])
    phase = Phase(stage, str(state.get("phase", "")))
    rel = checkpoint_relpath(phase, iteration, final)
    # A checkpoint written just before a kill may exist unregistered; the replayed run rewrites it.
    path = run.output_path(rel, overwrite=True)
    with atomic_output(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    meta = {
        "stage": stage,
        "phase": phase.name,
        "iteration": iteration,
        "epoch": int(state["epoch"]),
        "final": final,
    }
    return run.register("checkpoint", path, inputs=inputs, config=state.get("config"), meta=meta)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint weights-only; a file that is not one is a one-line user error."""
    path = Path(path)
    if not path.is_file():
        raise LvisctlError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, ...: all user-fixable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LvisctlError(f"{path}: not a loadable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict):
        raise LvisctlError(f"{path}: not an lvisctl checkpoint (expected a dict, got {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise LvisctlError(f"{path}: not an lvisctl checkpoint (missing {', '.join(missing)})")
    return ckpt


def stage_checkpoints(run: RunDir, phase: Phase | int, *, final: bool | None = None) -> list[Artifact]:
    """Registered checkpoints of ``phase`` (a stage number means that stage's default phase), oldest first."""
    meta: dict[str, Any] = {"phase": as_phase(phase).name}
    if final is not None:
        meta["final"] = final
    found = run.find("checkpoint", **meta)
    return sorted(found, key=lambda a: (int(a.meta.get("iteration", 0)), bool(a.meta.get("final"))))


def latest_checkpoint(run: RunDir, phase: Phase | int, *, final: bool | None = None) -> Artifact | None:
    found = stage_checkpoints(run, phase, final=final)
    return found[-1] if found else None


def prune_checkpoints(run: RunDir, phase: Phase | int, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` periodic checkpoints of ``stage``; returns the removed paths.

    The manifest entry goes first, then the file: a kill in between leaves an orphan file (harmless,
    rewritten or ignored), never a manifest entry pointing at nothing.
    """
    periodic = stage_checkpoints(run, phase, final=False)
    removed = []
    for artifact in periodic[: max(len(periodic) - max(keep, 1), 0)]:
        run.unregister(artifact.path)
        run.path_of(artifact.path).unlink(missing_ok=True)
        removed.append(artifact.path)
    return removed
