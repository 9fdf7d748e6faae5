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
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.engine.distributed import DistInfo, barrier
from lvisctl.errors import LvisctlError
from lvisctl.inference.predictor import Predictor, checkpoint_config
from lvisctl.inference.results import detections_to_records, split_paths, write_split_results
from lvisctl.rundir import Artifact, RunDir
from lvisctl.rundir.io import atomic_write_json, sha256_file

CHUNK_NAME = re.compile(r"rank(\d+)_(\d+)\.json")
META_NAME = "meta.json"


@dataclass(frozen=True)
class ImageItem:
    """One image to run on: its LVIS id and file."""

    image_id: int
    path: Path


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


def plan_chunks(items: Sequence[ImageItem], chunk_size: int) -> list[list[ImageItem]]:
    """Consecutive chunks of ``chunk_size`` images (the global, process-independent unit of work)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    return [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]


def finished_chunks(partial_dir: Path) -> dict[int, Path]:
    """Chunk index -> file for every chunk already on disk."""
    found: dict[int, Path] = {}
    if partial_dir.is_dir():
        for path in sorted(partial_dir.iterdir()):
            match = CHUNK_NAME.fullmatch(path.name)
            if match:
                found.setdefault(int(match.group(2)), path)
    return found


def prepare_partial_dir(partial_dir: Path, fingerprint: str) -> None:
    """Keep the chunks of an earlier run with the same fingerprint; clear anything else (rank 0 only)."""
    meta_path = partial_dir / META_NAME
    if meta_path.exists():
        try:
            same = json.loads(meta_path.read_text()).get("fingerprint") == fingerprint
        except (json.JSONDecodeError, AttributeError):
            same = False
        if same:
            return
        shutil.rmtree(partial_dir)
    partial_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta_path, {"fingerprint": fingerprint})


def read_image(path: Path) -> torch.Tensor:
    """An image file -> float ``[3, H, W]`` in [0, 1] (RGB; grey and RGBA files are converted)."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    with Image.open(path) as img:
        return pil_to_tensor(img.convert("RGB")).float().div_(255)


class _ChunkImages(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[ImageItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return self.items[i].image_id, read_image(self.items[i].path)


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def iter_batches(
    items: Sequence[ImageItem], batch_size: int, num_workers: int
) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """Decoded images in order, ``batch_size`` at a time, decoded by ``num_workers`` worker processes."""
    loader = torch.utils.data.DataLoader(
        _ChunkImages(items), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
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
) -> list[dict[str, Any]]:
    """Predict one chunk and turn it into results records (image order, best score first per image)."""
    records: list[dict[str, Any]] = []
    for batch in iter_batches(items, batch_size, num_workers):
        ids = [image_id for image_id, _ in batch]
        detections = predictor.predict_batch([image for _, image in batch])
        for image_id, dets in zip(ids, detections, strict=True):
            records.extend(detections_to_records(image_id, dets, category_map))
        if on_images is not None:
            on_images(len(batch))
    return records


def iter_final_records(partial_dir: Path, chunks: Sequence[Sequence[ImageItem]]) -> Iterator[dict[str, Any]]:
    """Every chunk's records in chunk order, one chunk file in memory at a time."""
    files = finished_chunks(partial_dir)
    for k, chunk in enumerate(chunks):
        data = json.loads(files[k].read_text())
        if data["image_ids"] != [item.image_id for item in chunk]:
            raise RuntimeError(f"{files[k]}: holds other images than chunk {k}")  # a bug, not a user error
        yield from data["records"]


def assemble(partial_dir: Path, chunks: Sequence[Sequence[ImageItem]], out_path: Path) -> int:
    """Write the final segm and bbox files (``split_paths(out_path)``) from the chunk files, remove them;
    returns the number of records."""
    count = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal count
        for record in iter_final_records(partial_dir, chunks):
            count += 1
            yield record

    write_split_results(counted(), out_path)
    shutil.rmtree(partial_dir)
    if partial_dir.parent.name == ".partial" and not any(partial_dir.parent.iterdir()):
        partial_dir.parent.rmdir()
    return count


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
) -> InferenceSummary:
    """Run ``predictor`` on ``items`` (all processes call this); rank 0 writes the two results files of
    ``split_paths(out_path)``.

    ``max_chunks`` stops each process after that many newly computed chunks (a time-limited job, or a
    test of resumption); the summary then says ``complete=False`` and a rerun continues.
    ``on_start(n_images)`` / ``on_images(n)`` report this process's progress.
    """
    dist = dist or DistInfo()
    start = time.perf_counter()
    chunks = plan_chunks(items, chunk_size)
    if dist.is_main:
        prepare_partial_dir(partial_dir, fingerprint)
    barrier(dist)  # every process sees the same finished chunks before dividing the rest
    done = finished_chunks(partial_dir)
    pending = [k for k in range(len(chunks)) if k not in done]
    mine = pending[dist.rank :: dist.world_size][:max_chunks]
    if on_start is not None:
        on_start(sum(len(chunks[k]) for k in mine))
    for k in mine:
        records = run_chunk(
            predictor,
            chunks[k],
            category_map,
            batch_size=batch_size,
            num_workers=num_workers,
            on_images=on_images,
        )
        payload = {"image_ids": [item.image_id for item in chunks[k]], "records": records}
        atomic_write_json(partial_dir / f"rank{dist.rank}_{k}.json", payload, indent=None)
    barrier(dist)  # all chunk files written
    summary = InferenceSummary(0, 0, 0.0, len(chunks), len(done), len(mine), complete=False)
    if dist.is_main and len(finished_chunks(partial_dir)) == len(chunks):
        summary.detections = assemble(partial_dir, chunks, out_path)
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


def default_checkpoint(run: RunDir) -> Artifact:
    """The newest final checkpoint of the highest stage (stage 2 fine-tuning beats stage 1)."""
    finals = run.find("checkpoint", final=True)
    if not finals:
        raise LvisctlError(
            f"{run.manifest_path}: no final checkpoint recorded; train first or pass --checkpoint PATH"
        )
    best_stage = max(int(a.meta.get("stage", 0)) for a in finals)
    return [a for a in finals if int(a.meta.get("stage", 0)) == best_stage][-1]


def resolve_checkpoint(run: RunDir, checkpoint: Path | None) -> tuple[Artifact | Path, Path, str]:
    """``(manifest input, file, sha256)`` of ``--checkpoint`` or the default one of the run dir."""
    if checkpoint is None:
        artifact = default_checkpoint(run)
        return artifact, run.resolve(artifact), artifact.sha256
    artifact = run.get(run.relative(checkpoint))
    if artifact is not None and artifact.kind == "checkpoint":
        return artifact, run.resolve(artifact), artifact.sha256
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise LvisctlError(f"{checkpoint}: checkpoint not found")
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
    on_start: Callable[[int], None] | None = None,
    on_images: Callable[[int], None] | None = None,
) -> PredictionsOutcome:
    """``lvisctl tta-infer``: run a checkpoint on every image of an LVIS / image-info file, write the LVIS
    results files ``<stem>.segm.json`` and ``<stem>.bbox.json`` into the run dir and register both (kind
    ``predictions``, meta ``iou_type`` and ``group`` = stem). Call it in every process of a ``torchrun``
    job; rank 0 writes the files and the manifest.

    The config is the checkpoint's, with ``overrides`` (``inference.batch_size=4``) and ``scales`` on top.
    ``tta`` sets ``inference.tta.mode`` (``paper``: section 3.3, ``lvisctl.inference.tta``); several
    checkpoints are run in one pass and fused per image (``inference.ensemble``), with the first one's config.
    """
    from lvisctl.data.lvis import load_lvis
    from lvisctl.engine.checkpoint import load_checkpoint
    from lvisctl.engine.distributed import init_distributed
    from lvisctl.inference.tta import predictor_from_checkpoints, resolve_scales

    given = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint or [])
    run = RunDir(run_dir, create=bool(given))  # the default checkpoint needs an existing run
    resolved = [resolve_checkpoint(run, c) for c in given] or [resolve_checkpoint(run, None)]
    ckpt_input, ckpt_path, ckpt_sha = resolved[0]
    images = images.expanduser().resolve()
    ckpt = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(ckpt, overrides)
    if tta is not None:
        cfg.inference.tta.mode = tta
    used_scales = resolve_scales(cfg, scales)
    icfg = cfg.inference
    group_path = (
        Path(str(out.expanduser().resolve()))
        if out
        else run.path_of(default_out_name(images, ckpt_path, used_scales, len(resolved), icfg.tta.mode))
    )
    for path in split_paths(group_path).values():  # refuse before the slow part (images, model)
        run.output_path(run.relative(path), overwrite=overwrite)
    out_path = group_path
    data = load_lvis(images, image_root=image_root, check_images=True)
    dist = init_distributed(cfg.device)
    loaded = [(ckpt, ckpt_path)] + [(load_checkpoint(path), path) for _, path, _ in resolved[1:]]
    predictor, stats = predictor_from_checkpoints(loaded, cfg, dist.device, overrides)
    items = [ImageItem(image_id, data.image_path(image_id)) for image_id in sorted(data.images)]
    fingerprint = fingerprint_of(
        checkpoint=ckpt_sha if len(resolved) == 1 else [sha for _, _, sha in resolved],
        images=sha256_file(images),
        image_root=data.image_root,
        config=cfg.to_dict(),
    )
    summary = run_inference(
        predictor,
        items,
        stats.category_map,
        out_path,
        run.root / ".partial" / out_path.stem,
        fingerprint=fingerprint,
        chunk_size=icfg.chunk_size,
        batch_size=icfg.batch_size,
        num_workers=icfg.num_workers,
        dist=dist,
        max_chunks=max_chunks,
        on_start=on_start,
        on_images=on_images,
    )
    outcome = PredictionsOutcome(
        summary, out_path, run.relative(ckpt_path), used_scales, dist.world_size, is_main=dist.is_main
    )
    if dist.is_main and summary.complete:
        group = split_paths(out_path)["segm"].name[: -len(".segm.json")]
        meta = {"gt": str(images), "scales": used_scales, "checkpoint": outcome.checkpoint}
        if icfg.tta.mode != "plain":
            meta["tta"] = icfg.tta.mode
        if len(resolved) > 1:
            meta["checkpoints"] = [run.relative(path) for _, path, _ in resolved]
        # bbox first: the segm file is then the newest predictions (what submit and evaluate take).
        for iou_type in ("bbox", "segm"):
            outcome.artifacts[iou_type] = run.register(
                "predictions",
                outcome.paths[iou_type],
                inputs=[*(c for c, _, _ in resolved), images],
                config=cfg.to_dict(),
                meta={"iou_type": iou_type, "group": group, **meta},
            )
    return outcome
