"""``lvisctl tta-infer`` as a job: a checkpoint (or several, fused) on every image of a json, into a run.

:class:`PredictJob` resolves the checkpoints (:mod:`lvisctl.inference.checkpoints`), builds the config and
the predictor (:mod:`lvisctl.inference.factory`), runs :func:`lvisctl.inference.runner.run_inference`
(sharded, resumable) and registers the two results files. ``pseudolabel`` runs the same job for its
intermediate predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError
from lvisctl.inference.checkpoints import ResolvedCheckpoint, resolve_checkpoint
from lvisctl.inference.chunks import META_NAME, ImageItem, fingerprint_of, remove_partial, to_stderr
from lvisctl.inference.factory import (
    checkpoint_config,
    predictor_from_checkpoints,
    resolve_scales,
    with_values,
)
from lvisctl.inference.results import split_paths
from lvisctl.inference.runner import (
    InferenceOptions,
    InferenceSummary,
    check_images_up_front,
    run_inference,
    skip_line,
)
from lvisctl.rundir import Artifact, RunDir
from lvisctl.rundir.io import sha256_file
from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs


@dataclass
class PredictionsOutcome:
    """What :class:`PredictJob` made (``artifact`` is None on ranks > 0 and when incomplete)."""

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


@dataclass
class PredictJob:
    """``lvisctl tta-infer``: run a checkpoint on every image of an LVIS / image-info file, write the LVIS
    results files ``<stem>.segm.json`` and ``<stem>.bbox.json`` into the run dir and register both (kind
    ``predictions``, meta ``iou_type`` and ``group`` = stem). Run it in every process of a ``torchrun``
    job; rank 0 writes the files and the manifest.

    The config is the checkpoint's, with ``overrides`` (``inference.batch_size=4``) and ``scales`` on top.
    ``extra_meta`` joins the artifacts' meta (``pseudolabel``: ``purpose``, so ``evaluate`` skips them).
    Images are found under ``image_root``, else the config's ``data.image_root`` (``data.root``), else
    the json's folder (:func:`lvisctl.data.lvis.resolve_image_root`). The output group is locked for the
    whole command (a second writer of the same predictions stops at once). Unreadable images are skipped
    and listed (``strict``: refused up front); a size that differs from the json's is refused up front.
    ``tta`` sets ``inference.tta.mode`` (``paper``: section 3.3, ``lvisctl.inference.tta``); several
    checkpoints are run in one pass and fused per image (``inference.ensemble``), with the first one's config.
    The checkpoint's categories must be the json's (ids and names), or ``map_by_name`` maps them by name
    (:mod:`lvisctl.inference.category_check`).
    """

    run_dir: Path
    images: Path
    checkpoint: Path | Sequence[Path] | None = None  # several: an ensemble in one pass
    scales: Sequence[int] | None = None
    tta: str | None = None
    image_root: Path | None = None
    out: Path | None = None  # the group X.json (default: default_out_name)
    overwrite: bool = False
    overrides: Sequence[str] = ()
    max_chunks: int | None = None
    strict: bool = False
    map_by_name: bool = False  # the checkpoint's classes onto the json's categories by name
    extra_meta: dict[str, Any] = field(default_factory=dict)  # e.g. pseudolabel's purpose
    on_start: Callable[[int], None] | None = None
    on_images: Callable[[int], None] | None = None
    notify: Callable[[str], None] | None = None

    def run(self) -> PredictionsOutcome:
        from lvisctl.engine.checkpoint import load_checkpoint

        given = [self.checkpoint] if isinstance(self.checkpoint, (str, Path)) else list(self.checkpoint or [])
        run = RunDir(self.run_dir, create=bool(given))  # the default checkpoint needs an existing run
        resolved = [resolve_checkpoint(run, c) for c in given] or [resolve_checkpoint(run, None)]
        images = Path(self.images).expanduser().resolve()
        ckpt = load_checkpoint(resolved[0].path)
        cfg = checkpoint_config(ckpt, self.overrides)
        if self.tta is not None:
            cfg = with_values(cfg, {"inference.tta.mode": self.tta}, source="--tta")
        cfg, used_scales = resolve_scales(cfg, self.scales)
        group_path = (
            Path(str(self.out.expanduser().resolve()))
            if self.out
            else run.path_of(
                default_out_name(images, resolved[0].path, used_scales, len(resolved), cfg.inference.tta.mode)
            )
        )
        outputs = split_paths(group_path).values()
        refuse_inputs_as_outputs(outputs, [images, *(r.path for r in resolved)])
        with output_lock(outputs):  # one writer of these files, even from another run dir (issue 22)
            for path in outputs:  # refuse before the slow part (images, model)
                if not finished_unregistered(run, path, run.root / ".partial" / group_path.stem):
                    run.output_path(run.relative(path), overwrite=self.overwrite)
            loaded = _Loaded(run, images, ckpt, cfg, group_path, resolved, used_scales)
            with run.phase_lock(f"predictions-{group_path.stem}"):
                return self._predict_locked(loaded)

    def _predict_locked(self, job: _Loaded) -> PredictionsOutcome:
        from lvisctl.data.lvis import resolve_image_root
        from lvisctl.data.lvis_cache import default_cache_dir, load_lvis_shared
        from lvisctl.engine.checkpoint import load_checkpoint
        from lvisctl.engine.distributed import init_distributed, set_cudnn_benchmark, timeout_of
        from lvisctl.inference.category_check import checkpoint_category_map

        notify = self.notify or to_stderr
        run, cfg, icfg = job.run, job.cfg, job.cfg.inference
        root = resolve_image_root(cfg.get("data"), option=self.image_root)
        # every rank reads the json; the sha256-keyed cache parses it once per machine
        data = load_lvis_shared(job.images, image_root=root, cache_dir=default_cache_dir())
        first = job.resolved[0]
        category_map = checkpoint_category_map(
            job.ckpt, data, checkpoint=first.path, by_name=self.map_by_name, notify=notify
        )
        items = [
            ImageItem(image_id, data.image_path(image_id), data.image_hw(image_id))
            for image_id in sorted(data.images)
        ]
        unreadable = check_images_up_front(data, strict=self.strict)
        dist = init_distributed(cfg.device, timeout_of(cfg))
        set_cudnn_benchmark(cfg, dist.device, training=False)
        loaded = [(job.ckpt, first.path)] + [(load_checkpoint(r.path), r.path) for r in job.resolved[1:]]
        predictor, _ = predictor_from_checkpoints(loaded, cfg, dist.device, self.overrides)
        fingerprint = fingerprint_of(
            checkpoint=first.sha256 if len(job.resolved) == 1 else [r.sha256 for r in job.resolved],
            images=sha256_file(job.images),
            image_root=data.image_root,
            config=cfg.to_dict(),
            **({"categories": category_map.cat_ids} if self.map_by_name else {}),
        )
        if unreadable and dist.is_main:
            notify(f"warning: {job.images}: {skip_line(unreadable)}; they are skipped (--strict refuses)")
        partial_dir = run.root / ".partial" / job.out_path.stem
        options = InferenceOptions(
            chunk_size=icfg.chunk_size,
            batch_size=icfg.batch_size,
            num_workers=icfg.num_workers,
            max_chunks=self.max_chunks,
            keep_partial=True,
            on_start=self.on_start,
            on_images=self.on_images,
            notify=notify,
        )
        summary = run_inference(
            predictor,
            items,
            category_map,
            job.out_path,
            partial_dir,
            fingerprint=fingerprint,
            dist=dist,
            options=options,
        )
        outcome = PredictionsOutcome(
            summary, job.out_path, run.relative(first.path), job.scales, dist.world_size, is_main=dist.is_main
        )
        if dist.is_main and summary.complete:
            _register_predictions(job, outcome, self)
            remove_partial(partial_dir)  # after registering: see assemble
            if summary.skipped and set(summary.skipped) != set(unreadable):
                notify(f"warning: {job.images}: {skip_line(summary.skipped)}; no predictions for them")
        return outcome


@dataclass
class _Loaded:
    """What :meth:`PredictJob.run` resolved before the slow part."""

    run: RunDir
    images: Path
    ckpt: dict[str, Any]
    cfg: Any
    out_path: Path
    resolved: list[ResolvedCheckpoint]  # every checkpoint (the first one's config)
    scales: list[int]


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


def finished_unregistered(run: RunDir, path: Path, partial_dir: Path) -> bool:
    """``path`` is this command's own output from a run killed after writing it but before recording it:
    it is not in the manifest and the chunk folder it was assembled from is still there (removed only
    after registration). A rerun re-assembles and registers it instead of refusing to overwrite it."""
    return path.exists() and run.get(run.relative(path)) is None and (partial_dir / META_NAME).is_file()


def _register_predictions(job: _Loaded, outcome: PredictionsOutcome, request: PredictJob) -> None:
    s = outcome.summary
    group = split_paths(job.out_path)["segm"].name[: -len(".segm.json")]
    meta: dict[str, Any] = {
        "gt": str(job.images),
        "scales": job.scales,
        "checkpoint": outcome.checkpoint,
        **request.extra_meta,
    }
    if job.cfg.inference.tta.mode != "plain":
        meta["tta"] = job.cfg.inference.tta.mode
    if request.map_by_name:
        meta["categories"] = "by name"
    if len(job.resolved) > 1:
        meta["checkpoints"] = [job.run.relative(r.path) for r in job.resolved]
    if s.skipped:
        meta["skipped_images"] = {str(i): why for i, why in sorted(s.skipped.items())}
    # bbox first: the segm file is then the newest predictions (what submit and evaluate take).
    for iou_type in ("bbox", "segm"):
        outcome.artifacts[iou_type] = job.run.register(
            "predictions",
            outcome.paths[iou_type],
            inputs=[*(r.input for r in job.resolved), job.images],
            config=job.cfg.to_dict(),
            meta={"iou_type": iou_type, "group": group, **meta},
        )


def images_for_run(
    run_dir: Any,
    images: Any,
    image_root: Any = None,
    image_list: Any = None,
    checkpoint: Any = None,
    *,
    workers: int = 8,
) -> tuple[Path, Path | None]:
    """``tta-infer --images DIR [--image-list FILE]``: an image folder (or a json without sizes) becomes an
    image-info json in ``DIR/predictions/`` (next to the results; evaluate, submit and lvis-api read it),
    with stable image ids and the categories of the checkpoint that will predict. An LVIS / complete
    image-info json is returned as is (not even read: LVIS val is 200 MB). Returns
    ``(images json, image root)``; skipped images are reported on stderr."""
    import sys

    from lvisctl.data.image_sources import categories_from_stats, image_info_for
    from lvisctl.engine.checkpoint import load_checkpoint

    if Path(images).is_file() and image_list is None:
        return Path(images), Path(image_root) if image_root is not None else None  # an LVIS / image-info json

    # several checkpoints (an ensemble) predict the same categories: the first one's
    first = checkpoint[0] if isinstance(checkpoint, (list, tuple)) and checkpoint else checkpoint

    def categories() -> list[dict[str, Any]]:
        run = RunDir(run_dir, create=bool(first))
        path = resolve_checkpoint(run, first or None).path
        return categories_from_stats(load_checkpoint(path)["category_stats"])

    source = image_info_for(
        images,
        out_dir=Path(run_dir) / "predictions",
        categories=categories,
        image_root=image_root,
        image_list=image_list,
        workers=workers,
    )
    for line in source.skipped.lines():
        print(line, file=sys.stderr)
    if source.converted:
        print(f"images: {source.num_images} from {images} -> {source.path}", file=sys.stderr)
    return source.path, source.image_root
