"""Sharded, resumable inference over an image list, writing a run's LVIS results files.

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

Damage and bad images. A chunk file that does not parse or holds other images than its chunk (a disk
error, a hand edit) is deleted and recomputed, with a note. An image that cannot be read (empty,
truncated, not an image) is skipped and listed: the chunk records it under ``skipped``, the final
summary and the manifest entry list it. ``strict=True`` refuses such images up front instead, and an
image whose size differs from the json's is always refused before anything is written (its masks would
be encoded at the wrong size).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.data.image_io import ImageReadError, ImageSizeError, read_image_tensor
from lvisctl.engine.distributed import DistInfo, barrier
from lvisctl.errors import LvisctlError
from lvisctl.inference.predictor import Predictor, checkpoint_config, writing_spares
from lvisctl.inference.results import DropCount, detections_to_records, split_paths, write_split_results
from lvisctl.rundir import Artifact, RunDir
from lvisctl.rundir.io import atomic_group, atomic_write_json, sha256_file
from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs

CHUNK_NAME = re.compile(r"rank(\d+)_(\d+)\.json")
META_NAME = "meta.json"


@dataclass(frozen=True)
class ImageItem:
    """One image to run on: its LVIS id, file and the json's ``(height, width)`` (checked when read)."""

    image_id: int
    path: Path
    hw: tuple[int, int] | None = None


@dataclass
class InferenceSummary:
    """What a run did, as rank 0 sees it. ``images``/``detections`` count the final files and
    ``images_computed`` the images of this run's new chunks, all processes together (0 when incomplete);
    ``chunks_computed`` is this process's count."""

    images: int
    detections: int
    seconds: float
    chunks_total: int
    chunks_resumed: int
    chunks_computed: int
    complete: bool
    images_computed: int = 0
    skipped: dict[int, str] = field(default_factory=dict)  # unreadable images (id -> why), no predictions
    chunks_damaged: int = 0  # chunk files found damaged and recomputed
    empty_dropped: int = 0  # detections with an empty mask left out (never written), all chunks


# A chunk file's count of detections left out for an empty mask (summed into the summary).
EMPTY_DROPPED = "empty_dropped"


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


def read_image(path: Path, expected_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """An image file -> float ``[3, H, W]`` in [0, 1], through the one reader (``data/image_io.py``)."""
    return read_image_tensor(path, expected_hw=expected_hw).float().div_(255)


class _ChunkImages(torch.utils.data.Dataset):
    """Decoded images, or the reason an image cannot be used (raised in a worker, an exception would
    reach the user as a multi-line DataLoader traceback)."""

    def __init__(self, items: Sequence[ImageItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None, bool]:
        item = self.items[i]
        try:
            # uint8 as decoded: the predictor copies it to the device once and converts there
            return item.image_id, read_image_tensor(item.path, expected_hw=item.hw), None, False
        except ImageSizeError as err:
            return item.image_id, None, str(err), True
        except ImageReadError as err:
            return item.image_id, None, str(err), False


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def iter_batches(
    items: Sequence[ImageItem], batch_size: int, num_workers: int, pin_memory: bool = False
) -> Iterator[list[tuple[int, torch.Tensor | None, str | None, bool]]]:
    """Decoded images in order, ``batch_size`` at a time, decoded by ``num_workers`` worker processes:
    ``(image_id, uint8 image or None, problem or None, problem is a size mismatch)``; ``pin_memory``
    (a CUDA predictor) lets the one copy to the device run asynchronously."""
    loader = torch.utils.data.DataLoader(
        _ChunkImages(items),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_as_list,
        pin_memory=pin_memory,
    )
    yield from loader


def run_chunk(
    predictor: Predictor,
    items: Sequence[ImageItem],
    category_map: CategoryMap,
    *,
    batch_size: int,
    num_workers: int,
    on_images: Callable[[int], None] | None = None,
    skipped: dict[int, str] | None = None,
    dropped: DropCount | None = None,
) -> list[dict[str, Any]]:
    """Predict one chunk and turn it into results records (image order, best score first per image).

    Unreadable images are left out and added to ``skipped``; an image of another size than the json
    says stops the run (its masks would be encoded at the wrong size). Detections with an empty mask are
    never written and never take a slot under the cap: the predictor leaves the surely-empty ones out
    before its top-k and keeps spares that replace the ones that paste empty (:func:`writing_spares`);
    ``dropped`` counts them.
    """
    dropped = dropped if dropped is not None else DropCount()
    before = int(getattr(predictor, "empty_dropped", 0))
    records: list[dict[str, Any]] = []
    pin = predictor.device.type == "cuda"
    with writing_spares(predictor):
        for batch in iter_batches(items, batch_size, num_workers, pin_memory=pin):
            for image_id, _, problem, wrong_size in batch:
                if wrong_size:
                    raise LvisctlError(f"{problem} (image {image_id})")
                if problem is not None and skipped is not None:
                    skipped[image_id] = problem
            good = [(image_id, image) for image_id, image, problem, _ in batch if problem is None]
            detections = predictor.predict_batch([image for _, image in good]) if good else []
            for (image_id, _), dets in zip(good, detections, strict=True):
                records.extend(detections_to_records(image_id, dets, category_map, dropped))
            if on_images is not None:
                on_images(len(batch))
    dropped.empty_masks += int(getattr(predictor, "empty_dropped", 0)) - before
    return records


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


def run_inference(
    predictor: Predictor,
    items: Sequence[ImageItem],
    category_map: CategoryMap,
    out_path: Path,
    partial_dir: Path,
    *,
    fingerprint: str,
    chunk_size: int = 500,
    batch_size: int = 1,
    num_workers: int = 0,
    dist: DistInfo | None = None,
    max_chunks: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_images: Callable[[int], None] | None = None,
    notify: Callable[[str], None] | None = None,
    keep_partial: bool = False,
) -> InferenceSummary:
    """Run ``predictor`` on ``items`` (all processes call this); rank 0 writes the two results files of
    ``split_paths(out_path)``. ``keep_partial``: leave the chunk folder for the caller to remove once
    the files are registered (a kill in between then reruns cleanly, see ``predict_to_run_dir``).

    ``max_chunks`` stops each process after that many newly computed chunks (a time-limited job, or a
    test of resumption); the summary then says ``complete=False`` and a rerun continues.
    ``on_start(n_images)`` / ``on_images(n)`` report this process's progress; ``notify`` gets one-line
    notes (damaged chunks recomputed; default: stderr).
    """
    dist = dist or DistInfo()
    notify = notify or _to_stderr
    start = time.perf_counter()
    chunks = plan_chunks(items, chunk_size, dist.world_size)
    damaged = 0
    if dist.is_main:
        prepare_partial_dir(partial_dir, fingerprint)
        damaged = drop_damaged_chunks(partial_dir, chunks, notify)
    barrier(dist)  # every process sees the same finished chunks before dividing the rest
    done = finished_chunks(partial_dir)
    pending = [k for k in range(len(chunks)) if k not in done]
    mine = pending[dist.rank :: dist.world_size][:max_chunks]
    if on_start is not None:
        on_start(sum(len(chunks[k]) for k in mine))
    for k in mine:
        skipped: dict[int, str] = {}
        dropped = DropCount()
        records = run_chunk(
            predictor,
            chunks[k],
            category_map,
            batch_size=batch_size,
            num_workers=num_workers,
            on_images=on_images,
            skipped=skipped,
            dropped=dropped,
        )
        payload = {"image_ids": [item.image_id for item in chunks[k]], "records": records}
        payload[EMPTY_DROPPED] = dropped.empty_masks
        if skipped:
            payload["skipped"] = {str(i): why for i, why in skipped.items()}
        write_chunk(partial_dir, dist.rank, k, payload, fingerprint)
    barrier(dist)  # all chunk files written
    summary = InferenceSummary(0, 0, 0.0, len(chunks), len(done), len(mine), complete=False)
    summary.chunks_damaged = damaged
    if dist.is_main and len(finished_chunks(partial_dir)) == len(chunks):
        counts: dict[str, int] = {}
        summary.detections = assemble(
            partial_dir, chunks, out_path, summary.skipped, keep_partial=keep_partial, counts=counts
        )
        summary.empty_dropped = counts.get(EMPTY_DROPPED, 0)
        summary.images = len(items)
        summary.images_computed = sum(len(chunks[k]) for k in pending)
        summary.complete = True
    summary.seconds = time.perf_counter() - start
    return summary


# ------------------------------------------------------------------------------ run-dir command
@dataclass
class PredictionsOutcome:
    """What :func:`predict_to_run_dir` made (``artifact`` is None on ranks > 0 and when incomplete)."""

    summary: InferenceSummary
    out_path: Path  # the group: the files are split_paths(out_path)
    checkpoint: str
    scales: list[int]
    world_size: int
    is_main: bool
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # iou type -> registered predictions

    @property
    def paths(self) -> dict[str, Path]:
        return split_paths(self.out_path)

    @property
    def artifact(self) -> Artifact | None:
        """The segm predictions (the run's main results file), as before the split."""
        return self.artifacts.get("segm")


def resolve_checkpoint(run: RunDir, checkpoint: str | Path | None) -> tuple[Artifact | Path, Path, str]:
    """``(manifest input, file, sha256)`` of ``--checkpoint`` (a path, ``best``, ``final`` or a phase
    name: the engine's one resolver), by default the newest final checkpoint of the highest stage."""
    from lvisctl.engine.checkpoint import resolve_checkpoint as resolve

    found = resolve(run, checkpoint)
    if isinstance(found, Artifact):
        return found, run.resolve(found), found.sha256
    path = Path(found).expanduser().resolve()
    return path, path, sha256_file(path)


def parse_scales(text: str) -> list[int]:
    """``"800"`` or ``"600,800,1000"`` -> ``[600, 800, 1000]``."""
    try:
        scales = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        scales = []
    if not scales or min(scales) < 1:
        raise LvisctlError(f"--scales {text!r}: expected positive integers separated by commas, e.g. 600,800")
    return scales


def default_out_name(
    images: Path, checkpoint: Path, scales: Sequence[int], n_checkpoints: int = 1, tta: str = "plain"
) -> str:
    """``predictions/<images>_<checkpoint>[+N]_s<scales>[_<tta>].json``: different inputs never share a
    file (the files written are its ``.segm.json`` and ``.bbox.json``)."""
    models = checkpoint.stem + (f"+{n_checkpoints - 1}" if n_checkpoints > 1 else "")
    suffix = "" if tta == "plain" else f"_{tta}"
    return f"predictions/{images.stem}_{models}_s{'-'.join(str(s) for s in scales)}{suffix}.json"


def fingerprint_of(**parts: Any) -> str:
    """A hash of everything that decides the results (see the module docstring)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def predict_to_run_dir(
    run_dir: Path,
    images: Path,
    *,
    checkpoint: Path | Sequence[Path] | None = None,
    scales: Sequence[int] | None = None,
    tta: str | None = None,
    image_root: Path | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    max_chunks: int | None = None,
    strict: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_images: Callable[[int], None] | None = None,
    extra_meta: dict[str, Any] | None = None,
    notify: Callable[[str], None] | None = None,
    map_by_name: bool = False,
) -> PredictionsOutcome:
    """``lvisctl tta-infer``: run a checkpoint on every image of an LVIS / image-info file, write the LVIS
    results files ``<stem>.segm.json`` and ``<stem>.bbox.json`` into the run dir and register both (kind
    ``predictions``, meta ``iou_type`` and ``group`` = stem). Call it in every process of a ``torchrun``
    job; rank 0 writes the files and the manifest.

    The config is the checkpoint's, with ``overrides`` (``inference.batch_size=4``) and ``scales`` on top.
    ``extra_meta`` joins the artifacts' meta (``pseudolabel``: ``purpose``, so ``evaluate`` skips them).
    Images are found under ``--image-root``, else the config's ``data.image_root`` (``data.root``), else
    the json's folder (:func:`lvisctl.data.lvis.resolve_image_root`). The output group is locked for the
    whole command (a second writer of the same predictions stops at once). Unreadable images are skipped
    and listed (``strict``: refused up front); a size that differs from the json's is refused up front.
    ``tta`` sets ``inference.tta.mode`` (``paper``: section 3.3, ``lvisctl.inference.tta``); several
    checkpoints are run in one pass and fused per image (``inference.ensemble``), with the first one's config.
    The checkpoint's categories must be the json's (ids and names), or ``map_by_name`` maps them by name
    (:mod:`lvisctl.inference.category_check`).
    """
    from lvisctl.engine.checkpoint import load_checkpoint
    from lvisctl.inference.tta import resolve_scales

    notify = notify or _to_stderr
    given = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint or [])
    run = RunDir(run_dir, create=bool(given))  # the default checkpoint needs an existing run
    resolved = [resolve_checkpoint(run, c) for c in given] or [resolve_checkpoint(run, None)]
    ckpt_input, ckpt_path, ckpt_sha = resolved[0]
    images = images.expanduser().resolve()
    ckpt = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(ckpt, overrides)
    if tta is not None:
        cfg = cfg.replace({"inference.tta.mode": tta}, source="--tta")
    cfg, used_scales = resolve_scales(cfg, scales)
    group_path = (
        Path(str(out.expanduser().resolve()))
        if out
        else run.path_of(
            default_out_name(images, ckpt_path, used_scales, len(resolved), cfg.inference.tta.mode)
        )
    )
    outputs = split_paths(group_path).values()
    refuse_inputs_as_outputs(outputs, [images, *(p for _, p, _ in resolved)])
    with output_lock(outputs):  # one writer of these files, even from another run dir (issue 22)
        for path in outputs:  # refuse before the slow part (images, model)
            if not finished_unregistered(run, path, run.root / ".partial" / group_path.stem):
                run.output_path(run.relative(path), overwrite=overwrite)
        job = _PredictJob(
            run,
            images,
            image_root,
            ckpt,
            ckpt_input,
            ckpt_path,
            ckpt_sha,
            cfg,
            group_path,
            resolved,
            used_scales,
            list(overrides),
            dict(extra_meta or {}),
            map_by_name,
        )
        with run.phase_lock(f"predictions-{group_path.stem}"):
            return _predict_locked(job, max_chunks, strict, on_start, on_images, notify)


def finished_unregistered(run: RunDir, path: Path, partial_dir: Path) -> bool:
    """``path`` is this command's own output from a run killed after writing it but before recording it:
    it is not in the manifest and the chunk folder it was assembled from is still there (removed only
    after registration). A rerun re-assembles and registers it instead of refusing to overwrite it."""
    return path.exists() and run.get(run.relative(path)) is None and (partial_dir / META_NAME).is_file()


@dataclass
class _PredictJob:
    run: RunDir
    images: Path
    image_root: Path | None
    ckpt: dict[str, Any]
    ckpt_input: Artifact | Path
    ckpt_path: Path
    ckpt_sha: str
    cfg: Any
    out_path: Path
    resolved: list[tuple[Artifact | Path, Path, str]]  # every checkpoint: (manifest input, file, sha256)
    scales: list[int]
    overrides: list[str]
    extra_meta: dict[str, Any] = field(default_factory=dict)  # e.g. pseudolabel's purpose
    map_by_name: bool = False  # the checkpoint's classes onto the json's categories by name


def _predict_locked(
    job: _PredictJob,
    max_chunks: int | None,
    strict: bool,
    on_start: Callable[[int], None] | None,
    on_images: Callable[[int], None] | None,
    notify: Callable[[str], None],
) -> PredictionsOutcome:
    from lvisctl.data.lvis import resolve_image_root
    from lvisctl.data.lvis_cache import default_cache_dir, load_lvis_shared
    from lvisctl.engine.checkpoint import load_checkpoint
    from lvisctl.engine.distributed import init_distributed, set_cudnn_benchmark, timeout_of
    from lvisctl.inference.category_check import checkpoint_category_map
    from lvisctl.inference.tta import predictor_from_checkpoints

    run, cfg, icfg = job.run, job.cfg, job.cfg.inference
    root = resolve_image_root(cfg.get("data"), option=job.image_root)
    # every rank reads the json; the sha256-keyed cache parses it once per machine
    data = load_lvis_shared(job.images, image_root=root, cache_dir=default_cache_dir())
    category_map = checkpoint_category_map(
        job.ckpt, data, checkpoint=job.ckpt_path, by_name=job.map_by_name, notify=notify
    )
    items = [
        ImageItem(image_id, data.image_path(image_id), data.image_hw(image_id))
        for image_id in sorted(data.images)
    ]
    unreadable = check_images_up_front(data, strict=strict)
    dist = init_distributed(cfg.device, timeout_of(cfg))
    set_cudnn_benchmark(cfg, dist.device, training=False)
    loaded = [(job.ckpt, job.ckpt_path)] + [(load_checkpoint(p), p) for _, p, _ in job.resolved[1:]]
    predictor, _ = predictor_from_checkpoints(loaded, cfg, dist.device, job.overrides)
    fingerprint = fingerprint_of(
        checkpoint=job.ckpt_sha if len(job.resolved) == 1 else [sha for _, _, sha in job.resolved],
        images=sha256_file(job.images),
        image_root=data.image_root,
        config=cfg.to_dict(),
        **({"categories": category_map.cat_ids} if job.map_by_name else {}),
    )
    if unreadable and dist.is_main:
        notify(f"warning: {job.images}: {_skip_line(unreadable)}; they are skipped (--strict refuses)")
    summary = run_inference(
        predictor,
        items,
        category_map,
        job.out_path,
        run.root / ".partial" / job.out_path.stem,
        fingerprint=fingerprint,
        chunk_size=icfg.chunk_size,
        batch_size=icfg.batch_size,
        num_workers=icfg.num_workers,
        dist=dist,
        max_chunks=max_chunks,
        on_start=on_start,
        on_images=on_images,
        notify=notify,
        keep_partial=True,
    )
    outcome = PredictionsOutcome(
        summary,
        job.out_path,
        run.relative(job.ckpt_path),
        job.scales,
        dist.world_size,
        is_main=dist.is_main,
    )
    if dist.is_main and summary.complete:
        _register_predictions(job, outcome, icfg)
        remove_partial(run.root / ".partial" / job.out_path.stem)  # after registering: see assemble
        if summary.skipped and set(summary.skipped) != set(unreadable):
            notify(f"warning: {job.images}: {_skip_line(summary.skipped)}; no predictions for them")
    return outcome


def check_images_up_front(data: Any, *, strict: bool) -> dict[int, str]:
    """Probe every image's header before any work: a size that differs from the json's is refused (one
    line naming the image); unreadable images are refused with ``strict``, else returned (skipped)."""
    from lvisctl.data.lvis import image_report

    report = image_report(data)
    if report.missing:
        image_id, path = next(iter(report.missing.items()))
        raise LvisctlError(
            f"{data.path}: image {image_id}: file {path} not found under image root {data.image_root} "
            f"({data.image_root_source}; {len(report.missing)} of {len(data.images)} images missing)"
        )
    if report.wrong_size:
        image_id, why = next(iter(report.wrong_size.items()))
        more = f"; {len(report.wrong_size) - 1} more images differ" if len(report.wrong_size) > 1 else ""
        raise LvisctlError(f"{why} (image {image_id}{more}); nothing was written")
    if report.unreadable and strict:
        raise LvisctlError(f"{data.path}: --strict: {_skip_line(report.unreadable)}")
    return report.unreadable


def _skip_line(problems: dict[int, str]) -> str:
    shown = "; ".join(f"image {i}: {why}" for i, why in list(problems.items())[:3])
    more = f"; ... and {len(problems) - 3} more" if len(problems) > 3 else ""
    return f"{len(problems)} unreadable image(s): {shown}{more}"


def _register_predictions(job: _PredictJob, outcome: PredictionsOutcome, icfg: Any) -> None:
    s = outcome.summary
    group = split_paths(job.out_path)["segm"].name[: -len(".segm.json")]
    meta: dict[str, Any] = {
        "gt": str(job.images),
        "scales": job.scales,
        "checkpoint": outcome.checkpoint,
        **job.extra_meta,
    }
    if icfg.tta.mode != "plain":
        meta["tta"] = icfg.tta.mode
    if job.map_by_name:
        meta["categories"] = "by name"
    if len(job.resolved) > 1:
        meta["checkpoints"] = [job.run.relative(path) for _, path, _ in job.resolved]
    if s.skipped:
        meta["skipped_images"] = {str(i): why for i, why in sorted(s.skipped.items())}
    # bbox first: the segm file is then the newest predictions (what submit and evaluate take).
    for iou_type in ("bbox", "segm"):
        outcome.artifacts[iou_type] = job.run.register(
            "predictions",
            outcome.paths[iou_type],
            inputs=[*(c for c, _, _ in job.resolved), job.images],
            config=job.cfg.to_dict(),
            meta={"iou_type": iou_type, "group": group, **meta},
        )


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
