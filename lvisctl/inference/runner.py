"""Sharded, resumable inference of one predictor over an image list (the chunk engine's images job).

:func:`run_inference` runs a predictor on every image, chunk by chunk through
:class:`lvisctl.inference.chunks.ChunkRun` (plan, resume, damaged-chunk recompute, assembly into the
``.segm.json`` / ``.bbox.json`` pair), and returns what it did. The command around it (checkpoint,
config, manifest) is :class:`lvisctl.inference.predict_job.PredictJob`.

Bad images. An image that cannot be read (empty, truncated, not an image) is skipped and listed: the
chunk records it under ``skipped``, the final summary and the manifest entry list it. ``strict=True``
refuses such images up front instead (:func:`check_images_up_front`), and an image whose size differs
from the json's is always refused before anything is written (its masks would be encoded at the wrong
size).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.data.image_io import ImageReadError, ImageSizeError, read_image_tensor
from lvisctl.engine.distributed import DistInfo
from lvisctl.errors import LvisctlError
from lvisctl.inference.chunks import EMPTY_DROPPED, ChunkRun, ImageItem, assemble, plan_chunks, to_stderr
from lvisctl.inference.predictor import Predictor, writing_spares
from lvisctl.inference.results import DropCount, detections_to_records


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


@dataclass
class InferenceOptions:
    """How :func:`run_inference` cuts and reports the work (``inference.*`` keys and the command's
    options)."""

    chunk_size: int = 500
    batch_size: int = 1
    num_workers: int = 0
    max_chunks: int | None = None  # stop each process after this many new chunks (complete=False)
    keep_partial: bool = False  # leave the chunk folder for the caller to remove after registering
    on_start: Callable[[int], None] | None = None  # this process's number of images to compute
    on_images: Callable[[int], None] | None = None  # n more images done (progress)
    notify: Callable[[str], None] | None = None  # one-line notes (damaged chunks); default stderr


def run_inference(
    predictor: Predictor,
    items: Sequence[ImageItem],
    category_map: CategoryMap,
    out_path: Path,
    partial_dir: Path,
    *,
    fingerprint: str,
    dist: DistInfo | None = None,
    options: InferenceOptions | None = None,
) -> InferenceSummary:
    """Run ``predictor`` on ``items`` (all processes call this); rank 0 writes the two results files of
    ``split_paths(out_path)``. ``options.keep_partial``: leave the chunk folder for the caller to remove
    once the files are registered (a kill in between then reruns cleanly, see ``PredictJob``).

    ``options.max_chunks`` stops each process after that many newly computed chunks (a time-limited job,
    or a test of resumption); the summary then says ``complete=False`` and a rerun continues.
    ``on_start(n_images)`` / ``on_images(n)`` report this process's progress; ``notify`` gets one-line
    notes (damaged chunks recomputed; default: stderr).
    """
    dist = dist or DistInfo()
    opt = options or InferenceOptions()
    start = time.perf_counter()
    work = ChunkRun(partial_dir, fingerprint, plan_chunks(items, opt.chunk_size, dist.world_size), dist)
    mine = work.start(opt.notify or to_stderr, opt.max_chunks)
    if opt.on_start is not None:
        opt.on_start(work.images_in(mine))
    for k in mine:
        skipped: dict[int, str] = {}
        dropped = DropCount()
        records = run_chunk(
            predictor,
            work.chunks[k],
            category_map,
            batch_size=opt.batch_size,
            num_workers=opt.num_workers,
            on_images=opt.on_images,
            skipped=skipped,
            dropped=dropped,
        )
        payload: dict[str, Any] = {"records": records, EMPTY_DROPPED: dropped.empty_masks}
        if skipped:
            payload["skipped"] = {str(i): why for i, why in skipped.items()}
        work.save(k, payload)
    summary = InferenceSummary(0, 0, 0.0, len(work.chunks), len(work.done), len(mine), complete=False)
    summary.chunks_damaged = work.damaged
    if work.complete():
        counts: dict[str, int] = {}
        summary.detections = assemble(
            partial_dir, work.chunks, out_path, summary.skipped, keep_partial=opt.keep_partial, counts=counts
        )
        summary.empty_dropped = counts.get(EMPTY_DROPPED, 0)
        summary.images = len(items)
        summary.images_computed = work.images_in(work.pending)
        summary.complete = True
    summary.seconds = time.perf_counter() - start
    return summary


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
        raise LvisctlError(f"{data.path}: --strict: {skip_line(report.unreadable)}")
    return report.unreadable


def skip_line(problems: dict[int, str]) -> str:
    shown = "; ".join(f"image {i}: {why}" for i, why in list(problems.items())[:3])
    more = f"; ... and {len(problems) - 3} more" if len(problems) > 3 else ""
    return f"{len(problems)} unreadable image(s): {shown}{more}"
