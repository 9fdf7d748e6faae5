"""The one checkpoint resolver of the inference commands (``tta-infer``, ``pseudolabel``, ``analyze``).

What the user types (a path, ``best``, ``final``, a phase name, or nothing) is turned into a file by the
engine's rule (:func:`lvisctl.engine.checkpoint.resolve_checkpoint`); this module adds what a command
needs around it: the manifest input to record (the registered artifact, or the outside file), the
absolute file, and its sha256 (the artifact's, else hashed once, when first asked).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lvisctl.rundir import Artifact, RunDir
from lvisctl.rundir.io import sha256_file


@dataclass
class ResolvedCheckpoint:
    """A checkpoint a command runs: ``input`` as the manifest records it, ``path`` the file."""

    input: Artifact | Path
    path: Path

    @cached_property
    def sha256(self) -> str:
        return self.input.sha256 if isinstance(self.input, Artifact) else sha256_file(self.path)

    @property
    def registered(self) -> bool:
        return isinstance(self.input, Artifact)


def resolve_checkpoint(
    run: RunDir, checkpoint: str | Path | None = None, *, stage: int | None = None
) -> ResolvedCheckpoint:
    """``--checkpoint`` (a path, ``best``, ``final`` or a phase name: the engine's one resolver); by
    default the run's newest final checkpoint of the highest stage, or of ``stage`` (``pseudolabel``:
    stage 1, whose lineage pseudo labels feed)."""
    from lvisctl.engine.checkpoint import resolve_checkpoint as resolve

    found = resolve(run, checkpoint, stage=stage)
    if isinstance(found, Artifact):
        return ResolvedCheckpoint(found, run.resolve(found))
    return ResolvedCheckpoint(found, Path(found).expanduser().resolve())
