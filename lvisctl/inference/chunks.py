"""The chunk engine: plan, resume, damaged-chunk recompute and final assembly of a resumable job.

Large image sets take hours, so the work is cut into chunks of ``chunk_size`` images (in image-id
order) and each finished chunk is saved at once to ``<partial_dir>/rank<r>_<k>.json`` (``r`` the process
that computed global chunk ``k``). A rerun skips the chunks already on disk; chunk files are written
atomically, so one that exists is complete. ``meta.json`` next to them holds a fingerprint of everything
that decides the results (checkpoint, image list, settings); partial results from other settings are
discarded instead of being mixed in.

Under ``torchrun`` every process takes a disjoint share of the pending chunks (round robin, so a resumed
run stays balanced), and the results are gathered through the chunk files: after a barrier, rank 0
streams them in chunk order into the final files (atomically) and removes the partial folder. The chunks
hold full records; the final assembly splits them into ``<stem>.segm.json`` (no ``bbox``, so mask metrics
use mask areas) and ``<stem>.bbox.json`` (no ``segmentation``), see ``results.write_split_results``. The
final files are therefore the same whatever the number of processes or interruptions.

A chunk file that does not parse, holds other images than its chunk or whose hash does not match (a disk
error, a hand edit) is deleted and recomputed, with a note. :class:`ChunkRun` is the one driver both
``tta-infer`` (:mod:`lvisctl.inference.runner`) and ``ensemble`` (:mod:`lvisctl.inference.ensemble`) use;
what a chunk holds is theirs to compute.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvisctl.engine.distributed import DistInfo, barrier
from lvisctl.errors import LvisctlError
from lvisctl.inference.results import write_split_results
from lvisctl.rundir.io import atomic_group, atomic_write_json

CHUNK_NAME = re.compile(r"rank(\d+)_(\d+)\.json")
META_NAME = "meta.json"
# A chunk file's count of detections left out for an empty mask (summed into the summary).
EMPTY_DROPPED = "empty_dropped"


@dataclass(frozen=True)
class ImageItem:
    """One image to run on: its LVIS id, file and the json's ``(height, width)`` (checked when read)."""

    image_id: int
    path: Path
    hw: tuple[int, int] | None = None


def plan_chunks(items: Sequence[ImageItem], chunk_size: int, world_size: int = 1) -> list[list[ImageItem]]:
    """Consecutive chunks of at most ``chunk_size`` images (the global unit of work).

    Several processes: as many chunks as a multiple of ``world_size``, of equal size (+-1 image), so
    every rank gets the same number of images and none waits at the final barrier for another's extra
    chunk (a whole chunk of paper TTA on a big model can exceed a collective's timeout).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if world_size <= 1 or not items:
        return [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
    n = -(-len(items) // chunk_size)
    n = min(-(-n // world_size) * world_size, len(items))
    bounds = [len(items) * k // n for k in range(n + 1)]
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def finished_chunks(partial_dir: Path) -> dict[int, Path]:
    """Chunk index -> file for every chunk already on disk."""
    found: dict[int, Path] = {}
    if partial_dir.is_dir():
        for path in sorted(partial_dir.iterdir()):
            match = CHUNK_NAME.fullmatch(path.name)
            if match:
                found.setdefault(int(match.group(2)), path)
    return found


def chunk_digest(fingerprint: str, payload: dict[str, Any]) -> str:
    """The hash a chunk file carries: of its content and the run's fingerprint, so a chunk edited by hand
    (well-formed or not) or left by other settings is recomputed, never reused."""
    body = {k: payload[k] for k in ("image_ids", "records", "skipped") if k in payload}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{fingerprint}\n{text}".encode()).hexdigest()


def write_chunk(partial_dir: Path, rank: int, k: int, payload: dict[str, Any], fingerprint: str) -> None:
    """Save chunk ``k`` (computed by ``rank``) atomically, with its :func:`chunk_digest`."""
    payload = {**payload, "sha256": chunk_digest(fingerprint, payload)}
    atomic_write_json(partial_dir / f"rank{rank}_{k}.json", payload, indent=None)


def _fingerprint_of_dir(partial_dir: Path) -> str | None:
    try:
        value = json.loads((partial_dir / META_NAME).read_bytes()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def read_chunk(path: Path, chunk: Sequence[ImageItem]) -> dict[str, Any] | None:
    """A chunk file's payload, or None when it is damaged: not json, not the records of ``chunk``, or
    its hash does not match its content and the fingerprint in the folder's ``meta.json``."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
        return None
    ok = (
        isinstance(data, dict)
        and data.get("image_ids") == [item.image_id for item in chunk]
        and isinstance(data.get("records"), list)
        and isinstance(data.get("skipped", {}), dict)
    )
    fingerprint = _fingerprint_of_dir(path.parent) if ok else None
    return data if ok and data.get("sha256") == chunk_digest(fingerprint or "", data) else None


def drop_damaged_chunks(
    partial_dir: Path, chunks: Sequence[Sequence[ImageItem]], notify: Callable[[str], None]
) -> int:
    """Delete chunk files that are damaged or belong to no chunk of this plan (rank 0, before the
    work is divided), so they are recomputed; returns how many."""
    dropped = []
    for k, path in finished_chunks(partial_dir).items():
        if k >= len(chunks) or read_chunk(path, chunks[k]) is None:
            path.unlink()
            dropped.append(path.name)
    if dropped:
        notify(
            f"note: {partial_dir}: {len(dropped)} damaged chunk file(s) deleted and recomputed: "
            + ", ".join(dropped[:5])
            + (" ..." if len(dropped) > 5 else "")
        )
    return len(dropped)


def prepare_partial_dir(partial_dir: Path, fingerprint: str) -> None:
    """Keep the chunks of an earlier run with the same fingerprint; clear anything else (rank 0 only)."""
    meta_path = partial_dir / META_NAME
    if meta_path.exists():
        try:
            same = json.loads(meta_path.read_bytes()).get("fingerprint") == fingerprint
        except (ValueError, AttributeError):  # damaged meta.json: start over
            same = False
        if same:
            return
    if partial_dir.exists():
        shutil.rmtree(partial_dir)
    partial_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta_path, {"fingerprint": fingerprint})


def iter_final_records(
    partial_dir: Path,
    chunks: Sequence[Sequence[ImageItem]],
    skipped: dict[int, str] | None = None,
    counts: dict[str, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every chunk's records in chunk order, one chunk file in memory at a time (``skipped`` collects
    the unreadable images the chunks list, ``counts`` sums their ``empty_dropped``)."""
    files = finished_chunks(partial_dir)
    for k, chunk in enumerate(chunks):
        data = read_chunk(files[k], chunk)
        if data is None:  # damaged after the start-of-run check: a rerun recomputes it
            files[k].unlink()
            raise LvisctlError(f"{files[k]}: chunk file damaged during the run; deleted, rerun to redo it")
        if skipped is not None:
            skipped.update({int(i): str(why) for i, why in data.get("skipped", {}).items()})
        if counts is not None:
            counts[EMPTY_DROPPED] = counts.get(EMPTY_DROPPED, 0) + int(data.get(EMPTY_DROPPED, 0))
        yield from data["records"]


def assemble(
    partial_dir: Path,
    chunks: Sequence[Sequence[ImageItem]],
    out_path: Path,
    skipped: dict[int, str] | None = None,
    *,
    keep_partial: bool = False,
    counts: dict[str, int] | None = None,
) -> int:
    """Write the final segm and bbox files (``split_paths(out_path)``) from the chunk files and (unless
    ``keep_partial``) remove them; returns the number of records (``counts``: see iter_final_records)."""
    count = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal count
        for record in iter_final_records(partial_dir, chunks, skipped, counts):
            count += 1
            yield record

    with atomic_group():  # the segm and bbox files appear together or not at all (e.g. a full disk)
        write_split_results(counted(), out_path)
    if not keep_partial:
        remove_partial(partial_dir)
    return count


def remove_partial(partial_dir: Path) -> None:
    """Delete a finished run's chunk folder (and ``.partial/`` when it is then empty)."""
    shutil.rmtree(partial_dir, ignore_errors=True)
    parent = partial_dir.parent
    if parent.name == ".partial" and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


def to_stderr(line: str) -> None:
    """The default ``notify`` of the jobs: one line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


def fingerprint_of(**parts: Any) -> str:
    """A hash of everything that decides the results (see the module docstring)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ChunkRun:
    """One resumable pass over ``chunks`` whose files live in ``partial_dir`` (all processes build it)."""

    partial_dir: Path
    fingerprint: str
    chunks: list[list[ImageItem]]
    dist: DistInfo = field(default_factory=DistInfo)
    done: dict[int, Path] = field(default_factory=dict)  # chunks finished before this run
    pending: list[int] = field(default_factory=list)  # chunks still to compute, all processes
    damaged: int = 0  # chunk files found damaged and deleted (rank 0)

    def start(self, notify: Callable[[str], None], max_chunks: int | None = None) -> list[int]:
        """Keep the chunks of an earlier run with the same fingerprint, drop damaged ones (rank 0), then
        this process's share of the rest: round robin, at most ``max_chunks``."""
        if self.dist.is_main:
            prepare_partial_dir(self.partial_dir, self.fingerprint)
            self.damaged = drop_damaged_chunks(self.partial_dir, self.chunks, notify)
        barrier(self.dist)  # every process sees the same finished chunks before dividing the rest
        self.done = finished_chunks(self.partial_dir)
        self.pending = [k for k in range(len(self.chunks)) if k not in self.done]
        return self.pending[self.dist.rank :: self.dist.world_size][:max_chunks]

    def save(self, k: int, payload: dict[str, Any]) -> None:
        """Chunk ``k``'s payload (``records`` and what the job counts), written by this process."""
        payload = {"image_ids": [item.image_id for item in self.chunks[k]], **payload}
        write_chunk(self.partial_dir, self.dist.rank, k, payload, self.fingerprint)

    def complete(self) -> bool:
        """After the final barrier: rank 0, and every chunk is on disk (assemble now)."""
        barrier(self.dist)  # all chunk files written
        return self.dist.is_main and len(finished_chunks(self.partial_dir)) == len(self.chunks)

    def images_in(self, ks: Sequence[int]) -> int:
        return sum(len(self.chunks[k]) for k in ks)
