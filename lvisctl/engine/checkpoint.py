"""Training checkpoints: plain dicts written atomically, registered in the manifest, loaded weights-only.

A checkpoint holds everything an exact resume needs and nothing that needs pickled code, so
``torch.load(path, weights_only=True)`` reads it:

``model`` (state dict), ``optimizer``, ``scheduler`` (the lr schedule's parameters), ``scaler`` (AMP),
``iteration`` (optimizer steps done), ``epoch`` and ``epoch_position`` (batches of that epoch consumed,
per process) to restart the data stream mid-epoch, ``rng`` (torch / CUDA / numpy / Python generator
states as tensors), ``history`` (logged losses, for the loss curve), ``config`` (resolved config dict),
``category_stats`` (``CategoryStats.to_dict()``, to rebuild the model without the training file),
``stage`` and ``final``.

Files are ``checkpoints/<phase>_iter<NNNNNNN>.pt``, ``checkpoints/<phase>_final.pt`` and, with
``train.save_best``, ``checkpoints/<phase>_best.pt`` (phase ``stage1``, ``stage2``, ``finetune_bags`` or a
``--phase`` name), registered as kind ``checkpoint`` with meta ``{"stage", "phase", "iteration", "epoch",
"final"}`` (+ ``"best": true, "metric", "value"`` for the best one).

:func:`resolve_checkpoint` is the one place that turns what a user types (``best``, ``final``, a phase
name, ``<phase>_best``, a path) into a checkpoint; ``tta-infer --checkpoint`` and stage 2 use it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvisctl.errors import LvisctlError, torch_load_problem
from lvisctl.rundir import Artifact, RunDir, atomic_output
from lvisctl.rundir.io import write_error

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


def checkpoint_relpath(phase: Phase | int, iteration: int, final: bool, *, best: bool = False) -> str:
    name = as_phase(phase).name
    if best:
        return f"checkpoints/{name}_best.pt"
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
    best: Mapping[str, Any] | None = None,
) -> Artifact:
    """Write ``state`` atomically (a kill mid-write leaves the previous file intact) and register it.

    ``best`` (``{"metric", "value"}``) writes ``<phase>_best.pt`` instead, registered with ``best: true``.
    """
    stage, iteration, final = int(state["stage"]), int(state["iteration"]), bool(state["final"])
    phase = Phase(stage, str(state.get("phase", "")))
    rel = checkpoint_relpath(phase, iteration, final, best=best is not None)
    # A checkpoint written just before a kill may exist unregistered; the replayed run rewrites it.
    path = run.output_path(rel, overwrite=True)
    _save_file({"format": FORMAT, **state}, path)
    meta = {
        "stage": stage,
        "phase": phase.name,
        "iteration": iteration,
        "epoch": int(state["epoch"]),
        "final": final,
    }
    if best is not None:
        meta.update(best=True, metric=str(best["metric"]), value=float(best["value"]))
    return run.register("checkpoint", path, inputs=inputs, config=state.get("config"), meta=meta)


def _save_file(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` atomically. A full disk or a read-only folder is one line naming the file: torch
    reports a failed write as ``RuntimeError("... unexpected pos ...")``; through a Python file object the
    ``OSError`` (ENOSPC) underneath is kept as its context, which is what is reported."""
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as err:
        cause = _os_error_in(err)
        user = write_error(path, cause) if cause is not None else None
        if user is None:
            raise
        raise user from None


def _os_error_in(err: BaseException) -> OSError | None:
    seen = 0
    cur: BaseException | None = err
    while cur is not None and seen < 8:
        if isinstance(cur, OSError):
            return cur
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint weights-only; a file that is not one is a one-line user error."""
    path = Path(path)
    if path.is_dir():
        raise LvisctlError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise LvisctlError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, ...: all user-fixable
        raise LvisctlError(f"{path}: not a loadable checkpoint ({torch_load_problem(err)})") from None
    if not isinstance(ckpt, dict):
        raise LvisctlError(f"{path}: not an lvisctl checkpoint (expected a dict, got {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise LvisctlError(f"{path}: not an lvisctl checkpoint (missing {', '.join(missing)})")
    return ckpt


def stage_checkpoints(run: RunDir, phase: Phase | int, *, final: bool | None = None) -> list[Artifact]:
    """Registered checkpoints of ``phase`` (a stage number means that stage's default phase), oldest first.

    The best checkpoint (``<phase>_best.pt``) is not part of the sequence (resume and pruning ignore it).
    """
    meta: dict[str, Any] = {"phase": as_phase(phase).name}
    if final is not None:
        meta["final"] = final
    found = [a for a in run.find("checkpoint", **meta) if not a.meta.get("best")]
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
        path = run.path_of(artifact.path)  # refuses a path outside the run dir before anything goes
        run.unregister(artifact.path)
        path.unlink(missing_ok=True)
        removed.append(artifact.path)
    return removed


def best_checkpoint(run: RunDir, phase: Phase | int | None = None) -> Artifact | None:
    """The registered ``<phase>_best.pt`` (newest of any phase when ``phase`` is None)."""
    meta = {} if phase is None else {"phase": as_phase(phase).name}
    found = [a for a in run.find("checkpoint", **meta) if a.meta.get("best")]
    return found[-1] if found else None


def default_checkpoint(
    run: RunDir, stage: int | None = None, *, what: str = "default checkpoint"
) -> Artifact:
    """The run's default checkpoint by the one rule of :mod:`lvisctl.rundir.defaults`, printed before
    anything loads: ``stage`` 1 = the newest final of the stage-1 lineage (where stage 2 and pseudo
    labelling start); None = the model to run (the highest stage's, refused when two phases compete)."""
    from lvisctl.rundir.defaults import announce, default_model_checkpoint, default_start_checkpoint

    choice = default_start_checkpoint(run) if stage == 1 else default_model_checkpoint(run)
    return announce(choice, what).artifact


def resolve_checkpoint(
    run: RunDir, spec: str | Path | None = None, *, stage: int | None = None
) -> Artifact | Path:
    """The checkpoint ``spec`` names in ``run``: a registered :class:`Artifact`, or a :class:`Path` to a
    file outside the manifest. Callers ``run.resolve(artifact)`` to check its sha256.

    ``spec``: None / ``""`` / ``final`` = the run's default checkpoint (:func:`default_checkpoint`: the
    one rule of :mod:`lvisctl.rundir.defaults`; ``stage`` 1 = the stage-1 lineage's newest final);
    ``best`` = the newest ``<phase>_best.pt`` (of a phase of ``stage`` when given);
    a phase name (``stage1``, ``finetune_bags``, a ``--phase`` name) = that phase's final checkpoint;
    ``<phase>_best`` / ``<phase>_final`` = that file; anything else is a path (a registered one returns
    its artifact). A name that matches nothing is a one-line error listing what the run holds.
    """
    text = "" if spec is None else str(spec)
    if text in ("", "final"):
        return default_checkpoint(run, stage, what="checkpoint" if text == "final" else "default checkpoint")
    if text == "best":
        bests = [
            a
            for a in run.find("checkpoint")
            if a.meta.get("best") and (stage is None or int(a.meta.get("stage", 0)) == stage)
        ]
        if not bests:
            raise LvisctlError(
                f"{run.manifest_path}: no best checkpoint recorded (train with train.save_best=segm_AP "
                "and train.eval_period)"
            )
        return bests[-1]
    if "/" not in text and not text.endswith(".pt"):
        named = _named_checkpoint(run, text)
        if named is not None:
            return named
    path = Path(text).expanduser()
    known = run.get(run.relative(path)) if path.exists() or not path.is_absolute() else None
    if known is not None and known.kind == "checkpoint":
        return known
    if path.is_file():
        return path
    phases = sorted({str(a.meta.get("phase")) for a in run.find("checkpoint")})
    hint = f" (this run has phases: {', '.join(phases)}; or use best / final)" if phases else ""
    raise LvisctlError(f"{text}: checkpoint not found{hint}")


def _named_checkpoint(run: RunDir, text: str) -> Artifact | None:
    """``<phase>``, ``<phase>_final`` or ``<phase>_best`` of a registered phase."""
    for suffix, want_best in (("_best", True), ("_final", False), ("", False)):
        if suffix and not text.endswith(suffix):
            continue
        name = text[: len(text) - len(suffix)] if suffix else text
        if want_best:
            found = best_checkpoint(run, Phase(0, name)) if name else None
        else:
            found = latest_checkpoint(run, Phase(0, name), final=True) if name else None
        if found is not None:
            return found
    return None
