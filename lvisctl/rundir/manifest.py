"""The run directory and its ``manifest.json``.

A run directory holds everything one experiment made. ``manifest.json`` lists each artifact with its
kind, relative path, sha256, size, creation time, the command line and resolved config that made it,
and the artifacts (or external files) it was made from, so lineage can be followed and later commands
find their inputs without being told paths.

The manifest is only ever rewritten atomically under a file lock, so concurrent commands on one run
directory cannot corrupt it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from lvisctl.errors import LvisctlError
from lvisctl.rundir.io import atomic_write_json, read_json, sha256_file, write_error
from lvisctl.rundir.lock import current_command, phase_lock

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
# Kinds that may be recorded outside the run dir: input data registered where it lies, read only.
EXTERNAL_KINDS = ("dataset",)
ARTIFACT_KINDS = (
    "dataset",
    "config",
    "checkpoint",
    "pseudo-labels",
    "predictions",
    "metrics",
    "submission",
    "plot",
    "report",
    "log",
)


@dataclass
class Artifact:
    """One manifest entry. ``path`` is relative to the run directory; ``inputs`` may name external files
    by absolute path."""

    kind: str
    path: str
    sha256: str
    size: int
    created: str
    command: str = ""
    config: dict[str, Any] | None = None
    inputs: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class RunDir:
    """A run directory. The folder and its manifest are created on the first write, so a command that
    fails on bad input leaves no empty run directory behind."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(path).expanduser().resolve()
        if not self.root.exists():
            if not create:
                raise LvisctlError(f"{self.root}: run directory does not exist")
            _check_creatable(self.root)
        elif not self.root.is_dir():
            raise LvisctlError(f"{self.root}: is not a directory")
        self.manifest_path = self.root / MANIFEST_NAME
        self._lock = FileLock(str(self.root / ".manifest.lock"), timeout=60)

    def _ensure(self) -> None:
        """Create the folder and an empty manifest (first write of a new run directory)."""
        if self.manifest_path.exists():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise (write_error(self.root, err) or err) from None
        with self._manifest_locked():
            if not self.manifest_path.exists():
                atomic_write_json(self.manifest_path, {"version": MANIFEST_VERSION, "artifacts": []})

    @contextlib.contextmanager
    def _manifest_locked(self) -> Iterator[None]:
        """The short lock around a manifest rewrite (a read-only run dir is one line, not a traceback)."""
        try:
            self._lock.acquire()
        except OSError as err:
            raise (write_error(self._lock.lock_file, err) or err) from None
        try:
            yield
        finally:
            self._lock.release()

    def phase_lock(
        self, phase: str, *, notify: Callable[[str], None] | None = None
    ) -> contextlib.AbstractContextManager[Path | None]:
        """Hold the write lock of ``phase`` (e.g. ``stage1``, ``predictions-val``) for a whole command.

        Take it before the command writes anything of the phase; a second writer of the same phase stops
        at once with one line naming the holder; a lock left by a killed process is taken over with a
        note. Readers never take it. See :mod:`lvisctl.rundir.lock`.
        """
        return phase_lock(self.root, phase, notify=notify)

    def exclusive(self, name: str) -> contextlib.AbstractContextManager[Path | None]:
        """The earlier name of :meth:`phase_lock` (kept so callers written against it keep working)."""
        return self.phase_lock(name)

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"version": MANIFEST_VERSION, "artifacts": []}
        data = read_json(self.manifest_path)
        if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
            raise LvisctlError(f"{self.manifest_path}: not an lvisctl manifest (no 'artifacts' list)")
        return data

    def artifacts(self, kind: str | None = None) -> list[Artifact]:
        """All artifacts (oldest first), optionally of one kind."""
        items = [self._artifact(i, a) for i, a in enumerate(self._read()["artifacts"])]
        return [a for a in items if kind is None or a.kind == kind]

    def _artifact(self, index: int, entry: Any) -> Artifact:
        """One manifest entry, checked: a hand-edited or damaged entry is one line, not a traceback."""
        where = f"{self.manifest_path}: artifact entry {index}"
        if not isinstance(entry, dict):
            raise LvisctlError(f"{where} is not an object; the manifest was edited or damaged")
        where += f" ({entry.get('path', '?')})"
        missing = [k for k in _REQUIRED_ENTRY_KEYS if not isinstance(entry.get(k), _REQUIRED_ENTRY_KEYS[k])]
        if missing:
            raise LvisctlError(
                f"{where} lacks a valid {', '.join(repr(k) for k in missing)}; the manifest was edited or "
                "damaged (restore it, or remove that entry)"
            )
        unknown = sorted(set(entry) - _ARTIFACT_FIELDS)
        if unknown:
            raise LvisctlError(f"{where} has unknown field(s) {unknown}; written by a newer lvisctl?")
        return Artifact(**entry)

    def find(self, kind: str, **meta: Any) -> list[Artifact]:
        """Artifacts of ``kind`` whose ``meta`` contains every given key/value, oldest first."""
        return [a for a in self.artifacts(kind) if all(a.meta.get(k) == v for k, v in meta.items())]

    def latest(self, kind: str, **meta: Any) -> Artifact:
        """The newest artifact of ``kind`` (matching ``meta``); a clear error when there is none."""
        found = self.find(kind, **meta)
        if not found:
            what = kind + (f" with {meta}" if meta else "")
            raise LvisctlError(
                f"{self.manifest_path}: no {what} artifact recorded; run the command that makes it first"
            )
        return found[-1]

    def get(self, rel_path: str) -> Artifact | None:
        for a in self.artifacts():
            if a.path == rel_path:
                return a
        return None

    def resolve(self, artifact: Artifact, *, verify: bool = True) -> Path:
        """Absolute path of ``artifact``, checked to exist and (by default) to still match its sha256."""
        path = self.artifact_path(artifact)
        if not path.exists():
            raise LvisctlError(
                f"{path}: recorded in {self.manifest_path.name} as {artifact.kind} but missing on disk"
            )
        if verify and sha256_file(path) != artifact.sha256:
            raise LvisctlError(
                f"{path}: sha256 no longer matches {self.manifest_path.name} "
                "(the file changed after it was recorded)"
            )
        return path

    def path_of(self, rel_path: str) -> Path:
        """Absolute path of a manifest path, which must stay inside the run directory.

        A run directory may come from someone else, so its manifest is untrusted input: an absolute path,
        a ``..`` that leaves the run dir or a symlink pointing out of it is refused here, the one place
        every read, write and delete through the manifest passes (``runs show --verify`` would hash a
        system file as "ok", ``train --overwrite`` delete it). External *inputs* are recorded in an
        artifact's ``inputs`` list and read through :meth:`input_path`, never deleted.
        """
        p = Path(rel_path)
        joined = self.root / p
        if p.is_absolute() or not _inside(joined, self.root) or not _inside(joined.resolve(), self.root):
            raise LvisctlError(
                f"{self.manifest_path}: path {rel_path!r} leaves the run directory; refusing to follow it "
                "(a manifest only names files inside its run directory)"
            )
        return joined

    def artifact_path(self, artifact: Artifact) -> Path:
        """The file of a manifest entry: :meth:`path_of`, except that a ``dataset`` may be recorded where
        it lies (``data synth --out DIR --run-dir RUN``): input data, only ever read, never deleted."""
        p = Path(artifact.path)
        if artifact.kind in EXTERNAL_KINDS and p.is_absolute():
            return p
        return self.path_of(artifact.path)

    def input_path(self, recorded: str) -> Path:
        """The file of an artifact's ``inputs`` record: inside the run dir as :meth:`path_of`, or an
        absolute external input (a training json, a checkpoint file), only ever read and hashed."""
        p = Path(recorded)
        return p if p.is_absolute() else self.path_of(recorded)

    def inside(self, path: str | os.PathLike[str]) -> bool:
        """``path`` lies inside the run directory (after resolving symlinks)."""
        return _inside(Path(path).expanduser().resolve(), self.root)

    def relative(self, path: str | os.PathLike[str]) -> str:
        """Path relative to the run dir when inside it, else absolute (external inputs)."""
        p = Path(path).expanduser().resolve()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    # ------------------------------------------------------------------ writing
    def output_path(self, rel_path: str, *, overwrite: bool = False) -> Path:
        """Where a command may write ``rel_path``. Refuses to replace an existing file unless ``overwrite``.

        Call this before doing the work, so a refused run fails fast and leaves nothing behind; it creates
        nothing (the atomic writers make the folders).
        """
        given = Path(rel_path)
        outside = given.is_absolute() and not self.inside(given)  # --out elsewhere: written, not recorded
        path = given if outside else self.path_of(rel_path)
        if path.exists() and not overwrite:
            raise LvisctlError(
                f"{path}: already exists; pass --overwrite to replace it or choose another --out"
            )
        return path

    def register(
        self,
        kind: str,
        path: str | os.PathLike[str],
        *,
        inputs: Sequence[Artifact | str | os.PathLike[str]] = (),
        config: dict[str, Any] | None = None,
        command: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Artifact:
        """Record a file the command has finished writing. Re-registering a path replaces its entry."""
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; expected one of {ARTIFACT_KINDS}")
        abs_path = Path(path).expanduser().resolve()
        # A manifest names only files inside its run dir (it is read back as untrusted input); a dataset
        # may stay where it lies. Other outputs written elsewhere on request are not recorded.
        recorded = self.inside(abs_path) or kind in EXTERNAL_KINDS
        if recorded:
            self._ensure()
        artifact = Artifact(
            kind=kind,
            path=self.relative(abs_path),
            sha256=sha256_file(abs_path),
            size=abs_path.stat().st_size,
            created=_now(),
            command=current_command() if command is None else command,
            config=config,
            inputs=[self._input_record(i) for i in inputs],
            meta=dict(meta or {}),
        )
        if not recorded:
            _note(f"note: {abs_path} is outside the run directory {self.root}; not recorded in its manifest")
            return artifact
        with self._manifest_locked():
            data = self._read()
            data["artifacts"] = [a for a in data["artifacts"] if a["path"] != artifact.path]
            data["artifacts"].append(asdict(artifact))
            atomic_write_json(self.manifest_path, data)
        return artifact

    def datasets(self) -> dict[str, str]:
        """The data this run remembers (``data.train``, ``val``, ``test_info``, ``image_root``: absolute
        paths recorded by the first command given them, or by ``lvisctl data register``)."""
        value = self._read().get("data")
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}

    def remember_datasets(self, values: dict[str, str], *, replace: bool = False) -> dict[str, str]:
        """Record the data keys not yet recorded (every one of ``values`` with ``replace``); returns the
        entries this call added or changed."""
        self._ensure()
        with self._manifest_locked():
            data = self._read()
            known = data.get("data") if isinstance(data.get("data"), dict) else {}
            added = {k: v for k, v in values.items() if (replace or k not in known) and known.get(k) != v}
            if added:
                data["data"] = {**known, **added}
                atomic_write_json(self.manifest_path, data)
        return added

    def unregister(self, rel_path: str) -> None:
        """Drop the entry for ``rel_path`` (the caller deletes the file, e.g. pruning old checkpoints)."""
        self._ensure()
        with self._manifest_locked():
            data = self._read()
            data["artifacts"] = [a for a in data["artifacts"] if a["path"] != rel_path]
            atomic_write_json(self.manifest_path, data)

    def _input_record(self, item: Artifact | str | os.PathLike[str]) -> dict[str, str]:
        if isinstance(item, Artifact):
            return {"path": item.path, "sha256": item.sha256, "kind": item.kind}
        rel = self.relative(item)
        known = self.get(rel)
        if known is not None:
            return {"path": known.path, "sha256": known.sha256, "kind": known.kind}
        return {"path": rel, "sha256": sha256_file(self.input_path(rel)), "kind": "external"}


_REQUIRED_ENTRY_KEYS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "path": str,
    "sha256": str,
    "size": int,
    "created": str,
}
_ARTIFACT_FIELDS = set(Artifact.__dataclass_fields__)


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(os.path.normpath(path)).relative_to(root)
    except ValueError:
        return False
    return True


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_creatable(root: Path) -> None:
    """``--run-dir afile/sub`` where ``afile`` is a file: say so now, before any work is done."""
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LvisctlError(f"{root}: cannot be created: {parent} is a file, not a folder")
            return
