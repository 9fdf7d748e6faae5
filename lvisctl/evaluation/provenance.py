"""Was a file scored against the GT the predictions were made on? And were two metrics files scored on the
same GT?

``tta-infer`` records the images json (for ``evaluate``, the GT) as an input of its predictions, with its
sha256. A GT edited in place after that would score the predictions against annotations they were not
made for: ``evaluate --run-dir`` compares the file with the recorded sha256 first. ``evaluate`` writes
the GT's path and sha256 into each metrics json (``scored.gt`` / ``scored.gt_sha256``), so ``--compare``
can say when two metrics files were scored on different GT files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError
from lvisctl.rundir.io import sha256_file


def check_gt_unchanged(gt: Path, artifacts: Sequence[Any], run: Any) -> None:
    """Refuse ``gt`` when an artifact records it (same path) as an input with another sha256."""
    target = Path(gt).resolve()
    for art in artifacts:
        for rec in getattr(art, "inputs", None) or []:
            if not isinstance(rec, Mapping) or not rec.get("sha256"):
                continue
            # inputs may be absolute external files (the GT json): input_path, not path_of (run-dir only)
            if run.input_path(str(rec.get("path", ""))).resolve() != target:
                continue
            now = sha256_file(target)
            if now != rec["sha256"]:
                raise LvisctlError(
                    f"{gt}: changed since {art.path} was predicted on it (sha256 {now[:12]}, recorded "
                    f"{rec['sha256'][:12]}); the predictions belong to the old file: restore it, or rerun "
                    "tta-infer on the new one"
                )


def gt_mismatch_line(metrics_a: Mapping[str, Any], metrics_b: Mapping[str, Any]) -> str | None:
    """A warning when two metrics files were scored on different GT files (path or content)."""
    a, b = _gt_of(metrics_a), _gt_of(metrics_b)
    if a is None or b is None:
        return None
    (path_a, sha_a), (path_b, sha_b) = a, b
    if sha_a and sha_b:
        same = sha_a == sha_b
    else:
        same = path_a == path_b
    if same:
        return None
    return (
        f"warning: A and B were scored on different ground truth (A: {path_a}, B: {path_b}"
        + (f"; sha256 {sha_a[:12]} vs {sha_b[:12]}" if sha_a and sha_b else "")
        + "): their numbers are not comparable"
    )


def _gt_of(metrics: Mapping[str, Any]) -> tuple[str, str | None] | None:
    scored = metrics.get("scored")
    if not isinstance(scored, Mapping) or not isinstance(scored.get("gt"), str):
        return None
    sha = scored.get("gt_sha256")
    return scored["gt"], sha if isinstance(sha, str) else None
