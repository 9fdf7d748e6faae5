"""The one rule for default inputs: which checkpoint or predictions a command takes when none is given.

* **Starting point** (``train --stage 2``, ``finetune-bags``, ``pseudolabel``): the newest final checkpoint
  of the *stage-1 lineage*: phase ``stage1`` and every stage-1 phase that continues it, i.e. whose recorded
  inputs lead back to a lineage checkpoint (self-training: ``--phase stage1_st`` trained on pseudo labels
  of the stage-1 model, or started from it). A stage-1 side experiment (another phase trained from
  scratch) is not part of it. Without a ``stage1`` phase, the only stage-1 phase there is.
* **Model** (``tta-infer``, ``analyze``): the newest final of the highest stage, when one phase of that
  stage has finals; when several do (``stage2`` and ``finetune_bags``), they are equally plausible and the
  command refuses with one line listing them and the ``--checkpoint`` values that choose.
* **Predictions** (``submit``, ``visualize``): the newest scorable predictions made on the images the
  command works on (``submit --image-info``, ``visualize --gt`` / ``--images`` json), never another
  split's; predictions that record no images (registered by hand) only when none is known to fit.

Every command prints what it chose (:meth:`DefaultChoice.line`: path, phase, when it was made) before it
loads anything. Works from manifest records only (this is the run directory layer).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError
from lvisctl.rundir.manifest import Artifact, RunDir

STAGE1 = "stage1"


@dataclass(frozen=True)
class DefaultChoice:
    """A default input and the rule that picked it."""

    artifact: Artifact
    rule: str

    def line(self, what: str) -> str:
        phase = self.artifact.meta.get("phase")
        made = f"phase {phase}, made {self.artifact.created}" if phase else f"made {self.artifact.created}"
        return f"{what}: {self.artifact.path} ({made}; {self.rule})"


def announce(choice: DefaultChoice, what: str, emit: Callable[[str], None] | None = None) -> DefaultChoice:
    """Print the choice once (rank 0 under torchrun; stdout unless ``emit``: stderr is kept for the one
    error line), and return it."""
    if emit is not None:
        emit(choice.line(what))
    elif os.environ.get("RANK", "0") == "0":
        print(choice.line(what), file=sys.stdout, flush=True)
    return choice


def _finals(run: RunDir, stage: int) -> list[Artifact]:
    """Final (not best) checkpoints of ``stage``, oldest first (manifest order)."""
    return [
        a
        for a in run.find("checkpoint", final=True)
        if not a.meta.get("best") and int(a.meta.get("stage", 0)) == stage
    ]


def _reaches(index: dict[str, Artifact], art: Artifact, targets: set[str]) -> bool:
    """Whether ``art``'s recorded inputs lead (through any artifacts) to one of ``targets`` (paths)."""
    todo, seen = [art], {art.path}
    while todo:
        for inp in todo.pop().inputs:
            path = str(inp.get("path", ""))
            if path in targets:
                return True
            if path in index and path not in seen:
                seen.add(path)
                todo.append(index[path])
    return False


def stage1_lineage(run: RunDir) -> list[Artifact]:
    """Finals of ``stage1`` and of the stage-1 phases that continue it (see the module docstring)."""
    finals = _finals(run, 1)
    lineage = [a for a in finals if a.meta.get("phase") == STAGE1]
    if not lineage:
        return []
    index = {a.path: a for a in run.artifacts()}
    paths = {a.path for a in lineage}
    grew = True
    while grew:
        grew = False
        for a in finals:
            if a.path not in paths and _reaches(index, a, paths):
                paths.add(a.path)
                grew = True
    return [a for a in finals if a.path in paths]


def _newest_by_phase(finals: Iterable[Artifact]) -> dict[str, Artifact]:
    out: dict[str, Artifact] = {}
    for a in finals:
        out[str(a.meta.get("phase"))] = a  # manifest order: the last one is the newest
    return out


def _ambiguous(run: RunDir, what: str, by_phase: dict[str, Artifact], choose: str) -> LvisctlError:
    listed = ", ".join(f"{p} ({a.path}, made {a.created})" for p, a in by_phase.items())
    flags = " or ".join(f"{choose}{p}" for p in by_phase)
    return LvisctlError(f"{run.manifest_path}: several {what} could be meant: {listed}; choose with {flags}")


def default_start_checkpoint(run: RunDir, choose: str = "--checkpoint ") -> DefaultChoice:
    """The checkpoint stage 2, ``finetune-bags`` and ``pseudolabel`` start from by default.

    ``choose``: how the command's user picks another (``--checkpoint `` or ``train.init_from=``), for the
    error that lists equally plausible candidates.
    """
    lineage = stage1_lineage(run)
    if lineage:
        return DefaultChoice(lineage[-1], "newest final of the stage-1 lineage")
    by_phase = _newest_by_phase(_finals(run, 1))
    if not by_phase:
        raise LvisctlError(
            f"{run.manifest_path}: no stage-1 final checkpoint recorded "
            f"(train stage 1 first, or choose one with {choose}PATH)"
        )
    if len(by_phase) > 1:
        raise _ambiguous(run, "stage-1 models (none is phase stage1)", by_phase, choose)
    return DefaultChoice(next(iter(by_phase.values())), "the only stage-1 phase with a final checkpoint")


def default_model_checkpoint(run: RunDir, choose: str = "--checkpoint ") -> DefaultChoice:
    """The model ``tta-infer`` and ``analyze`` run by default (see the module docstring)."""
    stages = sorted({int(a.meta.get("stage", 0)) for a in run.find("checkpoint", final=True)}, reverse=True)
    for stage in (s for s in stages if s > 1):
        by_phase = _newest_by_phase(_finals(run, stage))
        if len(by_phase) > 1:
            raise _ambiguous(run, f"stage-{stage} models", by_phase, choose)
        if by_phase:
            return DefaultChoice(next(iter(by_phase.values())), f"newest final of stage {stage}")
    if not stages:
        raise LvisctlError(
            f"{run.manifest_path}: no final checkpoint recorded; train first or pass --checkpoint PATH"
        )
    return default_start_checkpoint(run, choose)


def _same_file(recorded: Any, path: Path) -> bool:
    return bool(recorded) and Path(str(recorded)).expanduser().resolve() == path


def default_predictions(
    run: RunDir, images: str | os.PathLike[str], candidates: Sequence[Artifact]
) -> DefaultChoice:
    """The newest of ``candidates`` (scorable predictions, oldest first) made on ``images`` (the json they
    were predicted for: the artifact's ``gt`` meta, or an input with the same sha256)."""
    from lvisctl.rundir.io import sha256_file

    path = Path(images).expanduser().resolve()
    made_on = [a for a in candidates if _same_file(a.meta.get("gt"), path)]
    if not made_on and path.is_file():  # a copy of the json elsewhere: by content (hashed only then)
        digest = sha256_file(path)
        made_on = [a for a in candidates if any(i.get("sha256") == digest for i in a.inputs)]
    # Predictions registered by hand may not record their images: taken only when none is known to fit.
    unknown = [a for a in candidates if not a.meta.get("gt") and not a.inputs]
    if not made_on and unknown:
        return DefaultChoice(unknown[-1], "newest predictions; the images they were made on are not recorded")
    if not made_on:
        others = sorted({str(a.meta.get("gt")) for a in candidates if a.meta.get("gt")})
        seen = f" (the run has predictions on: {', '.join(others)})" if others else ""
        raise LvisctlError(
            f"{run.manifest_path}: no predictions made on {path} recorded{seen}; run tta-infer on it or pass "
            "the results file"
        )
    return DefaultChoice(made_on[-1], f"newest predictions made on {path.name}")
