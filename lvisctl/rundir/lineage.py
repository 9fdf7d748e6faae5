"""Does what an artifact was made from still exist? (``runs show --verify``)

An artifact records each input's path and sha256. ``train --stage 1 --overwrite`` (or an edited GT file)
replaces an input in place: the artifact itself is intact, but the file it was made from is gone, and a
"made from stage1_final.pt" would point at another file. An input is *there* when a file at its path still
has its sha256, or when any artifact of the run has that sha256 (a copy kept under another name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lvisctl.rundir.io import sha256_file


def gone_inputs(run: Any, artifact: Any, known_sha256: set[str] | None = None) -> list[str]:
    """The recorded inputs of ``artifact`` whose content exists nowhere any more (their paths)."""
    known = known_sha256 if known_sha256 is not None else {a.sha256 for a in run.artifacts()}
    gone = []
    for rec in artifact.inputs or []:
        sha = rec.get("sha256") if isinstance(rec, dict) else None
        if not sha or sha in known:
            continue
        if not _file_has(run, str(rec.get("path", "")), sha):
            gone.append(str(rec.get("path")))
    return gone


def _file_has(run: Any, rel: str, sha: str) -> bool:
    try:
        path = Path(run.path_of(rel))
    except Exception:  # noqa: BLE001 - a path the run dir refuses (e.g. leaving it): not there
        return False
    return path.is_file() and sha256_file(path) == sha
