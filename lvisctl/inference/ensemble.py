"""``lvisctl ensemble``: fuse results files of the same images into one results pair (:class:`EnsembleJob`).

The inputs are read and checked by :mod:`lvisctl.inference.ensemble_inputs`, fused image by image by
:func:`lvisctl.inference.ensemble_fusion.fuse_detections`, and written through the chunk engine
(:mod:`lvisctl.inference.chunks`): sharded over ``torchrun`` ranks and resumable by chunks like
``tta-infer``. Everything is checked before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvisctl.data.categories import CategoryMap
from lvisctl.errors import LvisctlError
from lvisctl.inference.chunks import (
    EMPTY_DROPPED,
    ChunkRun,
    ImageItem,
    assemble,
    fingerprint_of,
    plan_chunks,
    remove_partial,
    to_stderr,
)
from lvisctl.inference.ensemble_fusion import METHODS, fuse_detections, with_cap
from lvisctl.inference.ensemble_inputs import (
    ResultsInput,
    check_image_sets,
    joined_bbox_files,
    non_empty,
    read_results_input,
    records_to_detections,
)
from lvisctl.inference.predictor import spare_count
from lvisctl.inference.results import DropCount, detections_to_records, split_paths
from lvisctl.rundir import RunDir

__all__ = ["EnsembleJob", "EnsembleOutcome", "ensemble_partial_dir", "ensemble_to_run_dir"]


@dataclass
class EnsembleOutcome:
    """What :class:`EnsembleJob` made; ``paths`` empty when stopped by ``max_chunks``."""

    images: int
    detections: int
    seconds: float
    chunks_total: int
    chunks_resumed: int
    complete: bool
    paths: dict[str, Path] = field(default_factory=dict)
    is_main: bool = True
    empty_dropped: int = 0  # detections with an empty mask left out (inputs before the cap, fused masks)


@dataclass
class EnsembleJob:
    """``lvisctl ensemble``: fuse ``inputs`` (results files of the same images) into ``split_paths(out)``
    (the ``.segm.json`` / ``.bbox.json`` pair ``tta-infer`` writes), registered in ``run_dir`` when given.

    An output that is one of the inputs is refused (``overwrite`` or not), and the outputs are locked for
    the whole command (a lock file next to them), so two ensembles, or an ensemble and a tta-infer,
    writing one ``out`` cannot mix or replace each other's files. Chunks of ``chunk_size`` images are
    saved to a partial folder as they finish (a rerun resumes), shared round robin by ``torchrun`` ranks.
    """

    inputs: Sequence[Path]
    out: Path
    weights: Sequence[float] | None = None  # one per input (default: equal)
    method: str = "wbf"  # wbf, nms or soft-nms
    iou_thr: float = 0.55
    skip_box_thr: float = 0.0
    detections_per_image: int = 300
    images: Path | None = None  # LVIS / image-info json: checks ids and sizes
    run_dir: Path | None = None
    overwrite: bool = False
    chunk_size: int = 500
    max_chunks: int | None = None
    on_images: Callable[[int], None] | None = None

    def run(self) -> EnsembleOutcome:
        from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs

        paths = split_paths(Path(self.out).expanduser().resolve())
        refuse_inputs_as_outputs(paths.values(), [*self.inputs, *joined_bbox_files(self.inputs), self.images])
        root = Path(self.run_dir).expanduser().resolve() if self.run_dir is not None else paths["segm"].parent
        with output_lock(paths.values()):
            try:
                return self._run_locked()
            except Exception:  # a failure (bad input, full disk) leaves no chunk folder; a kill keeps it
                remove_partial(ensemble_partial_dir(root, paths))
                raise

    def _check_options(self) -> None:
        from lvisctl.inference.ensemble_checks import check_iou, check_skip_score, parse_weights

        if len(self.inputs) < 1:
            raise LvisctlError("ensemble: give at least one results file")
        if self.weights is not None and len(self.weights) != len(self.inputs):
            raise LvisctlError(f"--weights: {len(self.weights)} weights for {len(self.inputs)} results files")
        if self.weights is not None:
            parse_weights(",".join(map(str, self.weights)))  # finite and > 0
        check_iou(self.iou_thr)
        check_skip_score(self.skip_box_thr)
        if self.method not in METHODS:
            raise LvisctlError(f"--method {self.method!r}: expected one of {', '.join(METHODS)}")

    def _run_locked(self) -> EnsembleOutcome:
        from lvisctl.engine.distributed import init_distributed
        from lvisctl.inference.ensemble_checks import image_table as results_table
        from lvisctl.rundir.io import sha256_file

        start = time.perf_counter()
        self._check_options()
        run = RunDir(self.run_dir) if self.run_dir is not None else None
        out = Path(self.out).expanduser().resolve()
        paths = split_paths(out)
        for path in paths.values():  # refuse before the slow part
            if run is not None:
                run.output_path(run.relative(path), overwrite=self.overwrite)
            elif path.exists() and not self.overwrite:
                raise LvisctlError(f"{path}: already exists (pass --overwrite to replace it)")
        image_table = None
        if self.images is not None:
            from lvisctl.data.lvis import load_lvis

            image_table = load_lvis(self.images).images
        table = results_table(self.images)
        read = [read_results_input(Path(p).expanduser().resolve(), table) for p in self.inputs]
        check_image_sets(read, image_table, self.images)
        image_ids = sorted(set(image_table) if image_table is not None else set(read[0].by_image))
        settings = self._settings()
        fingerprint = fingerprint_of(  # the chunk size too: chunk k of another size is other images
            inputs=[sha256_file(f) for inp in read for f in inp.files],
            k=self.detections_per_image,
            chunk_size=self.chunk_size,
            **settings,
        )
        partial_dir = ensemble_partial_dir(run.root if run is not None else out.parent, paths)
        chunks = plan_chunks([ImageItem(i, Path()) for i in image_ids], self.chunk_size)
        work = ChunkRun(partial_dir, fingerprint, chunks, init_distributed("cpu"))
        self._fuse_chunks(work, read, _sizes(read, image_table))
        outcome = EnsembleOutcome(
            len(image_ids), 0, 0.0, len(chunks), len(work.done), False, is_main=work.dist.is_main
        )
        if work.complete():
            counts: dict[str, int] = {}
            outcome.detections = assemble(partial_dir, chunks, out, counts=counts)
            outcome.empty_dropped = counts.get(EMPTY_DROPPED, 0)
            outcome.complete, outcome.paths = True, paths
            if run is not None:
                _register(run, read, paths, self.images, settings)
        outcome.seconds = time.perf_counter() - start
        return outcome

    def _settings(self) -> dict[str, Any]:
        """The fusion settings (the fingerprint's and the manifest's ``ensemble`` meta)."""
        weights = list(self.weights or [])
        return {"weights": weights, "method": self.method, "iou": self.iou_thr, "skip": self.skip_box_thr}

    def _fuse_chunks(
        self, work: ChunkRun, read: Sequence[ResultsInput], sizes: Mapping[int, tuple[int, int]]
    ) -> None:
        """Fuse and save this process's share of the pending chunks."""
        cat_ids = sorted(
            {int(r["category_id"]) for inp in read for recs in inp.by_image.values() for r in recs}
        )
        cmap = CategoryMap(cat_ids)
        k_fused = self.detections_per_image + spare_count(self.detections_per_image)
        for k in work.start(to_stderr, self.max_chunks):
            records = []
            dropped = DropCount()
            for item in work.chunks[k]:
                size = sizes.get(item.image_id, (1, 1))
                members = [
                    records_to_detections(non_empty(inp.by_image.get(item.image_id, []), dropped), size, cmap)
                    for inp in read
                ]
                fused = fuse_detections(  # spares: a fused mask that votes empty gives its slot to the next
                    members,
                    size,
                    weights=self.weights,
                    method=self.method,
                    iou_thr=self.iou_thr,
                    skip_box_thr=self.skip_box_thr,
                    k=k_fused,
                )
                fused = with_cap(fused, self.detections_per_image)
                records.extend(detections_to_records(item.image_id, fused, cmap, dropped))
            work.save(k, {"records": records, EMPTY_DROPPED: dropped.empty_masks})
            if self.on_images is not None:
                self.on_images(len(work.chunks[k]))


def ensemble_to_run_dir(inputs: Sequence[Path], out: Path, **options: Any) -> EnsembleOutcome:
    """:class:`EnsembleJob` as a function (scripts, benchmarks): ``options`` are its fields."""
    return EnsembleJob(list(inputs), out, **options).run()


def ensemble_partial_dir(root: Path, paths: Mapping[str, Path]) -> Path:
    """``<run dir or output folder>/.partial/<out>_ensemble``: the resumable chunks of one output."""
    return root / ".partial" / (paths["segm"].name[: -len(".segm.json")] + "_ensemble")


def _sizes(
    read: Sequence[ResultsInput], image_table: Mapping[int, Mapping[str, Any]] | None
) -> dict[int, tuple[int, int]]:
    """Each image's (height, width): the json's when given, else the first input's masks'."""
    sizes = {i: s for inp in reversed(read) for i, s in inp.sizes.items()}
    if image_table is not None:
        sizes.update({i: (int(r["height"]), int(r["width"])) for i, r in image_table.items()})
    return sizes


def _register(run, read: Sequence[ResultsInput], paths: Mapping[str, Path], images, settings) -> None:
    group = paths["segm"].name[: -len(".segm.json")]
    inputs: list[Any] = []
    gt = str(Path(images).expanduser().resolve()) if images is not None else None
    for inp in read:
        for f in inp.files:
            artifact = run.get(run.relative(f))
            inputs.append(artifact if artifact is not None else f)
            if gt is None and artifact is not None and artifact.meta.get("gt"):
                gt = artifact.meta["gt"]
    if images is not None:
        inputs.append(Path(images).expanduser().resolve())
    meta = {"group": group, "ensemble": settings, **({"gt": gt} if gt else {})}
    for iou_type in ("bbox", "segm"):  # segm last: the newest predictions, what evaluate / submit take
        run.register("predictions", paths[iou_type], inputs=inputs, meta={"iou_type": iou_type, **meta})
