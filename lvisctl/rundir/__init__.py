"""Run directories: every artifact a command makes is recorded in ``manifest.json``."""

from lvisctl.rundir.io import (
    atomic_group,
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    sha256_file,
)
from lvisctl.rundir.lock import PhaseLockedError
from lvisctl.rundir.manifest import ARTIFACT_KINDS, Artifact, RunDir

__all__ = [
    "ARTIFACT_KINDS",
    "Artifact",
    "atomic_group",
    "PhaseLockedError",
    "RunDir",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "sha256_file",
]
