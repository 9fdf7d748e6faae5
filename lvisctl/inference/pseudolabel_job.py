"""``lvisctl pseudolabel SOURCE`` as a job (:class:`PseudoLabelJob`): resolve the images, predict on them
(``tta-infer``'s :class:`~lvisctl.inference.predict_job.PredictJob`: sharded, resumable), select pseudo
labels (:mod:`lvisctl.inference.pseudo_labels`) and write them as an LVIS json registered as
``pseudo-labels``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError
from lvisctl.inference.checkpoints import ResolvedCheckpoint, resolve_checkpoint
from lvisctl.inference.factory import checkpoint_config
from lvisctl.inference.predict_job import PredictionsOutcome, PredictJob
from lvisctl.inference.pseudo_label_records import ScoreSample
from lvisctl.inference.pseudo_labels import (
    DEFAULT_SCORE_THRESH,
    HANDFUL,
    PURPOSE,
    SOURCES,
    ScoreThresholds,
    Selector,
    write_pseudo_labels,
)
from lvisctl.inference.results import iter_split_results
from lvisctl.rundir import RunDir


@dataclass
class PseudoLabelOutcome:
    """What :class:`PseudoLabelJob` made (``artifact`` None on ranks > 0)."""

    artifact: Any
    checkpoint: str  # the checkpoint used, as the run dir records it
    checkpoint_note: str  # e.g. "stage 1, final, iteration 600 (newest stage-1 final)"
    skipped: Any  # image_sources.SkipReport
    score_lines: list[str] = field(default_factory=list)  # the score distribution when few survived
    incomplete: bool = False  # stopped by max_chunks on rank 0: rerun to continue
    empty_dropped: int = 0  # predictions with an empty mask left out (never a label)


@dataclass
class PseudoLabelJob:
    """``lvisctl pseudolabel SOURCE``: resolve the images, predict on them (sharded, resumable, through
    ``tta-infer``'s job), select pseudo labels and write them as an LVIS json registered as
    ``pseudo-labels``. ``on_note`` hears which checkpoint is used before the images are read.
    ``max_chunks`` stops each process after that many new chunks of inference (time-limited jobs); a
    rerun continues. The default checkpoint is the newest final stage-1 one (pseudo labels feed stage 1),
    whatever ran last.
    """

    run_dir: Path
    source: str  # lvis, openimages or images (SOURCES)
    images: Path | None = None
    image_root: Path | None = None
    image_list: Path | None = None
    checkpoint: Path | None = None
    scales: Sequence[int] | None = None
    score_thresh: ScoreThresholds | float = DEFAULT_SCORE_THRESH
    max_gt_iou: float = 0.0
    max_per_image: int = 50
    out: Path | None = None
    overwrite: bool = False
    overrides: Sequence[str] = ()
    workers: int = 8
    max_chunks: int | None = None
    on_start: Callable[[int], None] | None = None
    on_images: Callable[[int], None] | None = None
    on_note: Callable[[str], None] | None = None

    def run(self) -> PseudoLabelOutcome:
        from lvisctl.data.image_sources import categories_from_stats
        from lvisctl.engine.checkpoint import load_checkpoint
        from lvisctl.rundir.outputs import output_lock, refuse_inputs_as_outputs

        if self.source not in SOURCES:
            raise LvisctlError(
                f"pseudolabel: SOURCE must be one of {', '.join(SOURCES)}, got {self.source!r}"
            )
        mode = SOURCES[self.source]
        score_thresh = self.score_thresh
        if not isinstance(score_thresh, ScoreThresholds):
            score_thresh = ScoreThresholds.parse(str(score_thresh))
        run = RunDir(self.run_dir, create=self.checkpoint is not None)
        resolved = resolve_checkpoint(run, self.checkpoint, stage=1 if self.checkpoint is None else None)
        note = "--checkpoint" if self.checkpoint is not None else "newest stage-1 final"
        src = _images_of(self.source, run, resolved.input, self.images, self.image_root)
        out_rel = str(self.out) if self.out else f"pseudo_labels/{_source_name(src)}_{mode}.json"
        _check_output(run, out_rel, self.overwrite, score_thresh)  # before the model loads (checked again)
        ckpt = load_checkpoint(resolved.path)
        categories = categories_from_stats(ckpt["category_stats"])
        note = f"stage {ckpt.get('stage')}, iteration {ckpt.get('iteration')}" + (
            f", final; {note}" if ckpt.get("final") else f"; {note}"
        )
        _tell(self.on_note, [f"checkpoint: {run.relative(resolved.path)} ({note})"])  # before the slow part
        target = run.output_path(out_rel, overwrite=True)  # where it goes; existence checked under the locks
        refuse_inputs_as_outputs([target], [resolved.path, self.images, self.image_list])
        # one writer of this pseudo-label file at a time (its inference is locked again by the runner)
        with run.phase_lock(f"pseudolabel-{Path(out_rel).stem}"), output_lock([target]):
            out_path = run.output_path(out_rel, overwrite=self.overwrite)  # fail before hours of inference
            info = _image_source(
                self.source, src, run, categories, self.image_root, self.image_list, self.workers
            )
            outcome = PseudoLabelOutcome(None, run.relative(resolved.path), note, info.skipped)
            _tell(self.on_note, info.skipped.lines())
            gt = _load_images(info, mode)
            pred = self._predict(run, info, mode, resolved)
            if not pred.is_main or pred.artifact is None:
                outcome.incomplete = pred.is_main  # rank 0 without predictions: max_chunks stopped it
                return outcome
            outcome.empty_dropped = pred.summary.empty_dropped
            selection = _Selection(score_thresh, categories, _category_filter(ckpt, self.overrides))
            selector = Selector.for_data(
                gt,
                mode,
                score_thresh.by_category(categories),
                self.max_gt_iou,
                self.max_per_image,
                selection.category_filter,
            )
            num = self._write(out_path, pred, selector, selection, info, resolved, outcome)
            meta = {
                "mode": mode,
                "source": self.source,
                "images": str(info.path),
                "checkpoint": outcome.checkpoint,
                "score_thresh": str(score_thresh),
                **({"category_filter": selection.category_filter} if mode == "missing" else {}),
                "num_labels": num[0],
                "num_images": num[1],
                "skipped_images": outcome.skipped.count,
                **({"image_root": str(info.image_root)} if info.image_root else {}),
            }
            inputs = [pred.artifact, resolved.input, info.path]
            outcome.artifact = run.register("pseudo-labels", out_path, inputs=inputs, meta=meta)
            return outcome

    def _predict(self, run: RunDir, info: Any, mode: str, resolved: ResolvedCheckpoint) -> PredictionsOutcome:
        # unlabeled images keep the top max_per_image anyway: the intermediate file need not hold 300
        cap = [f"inference.detections_per_image={self.max_per_image}"] if mode == "unlabeled" else []
        return PredictJob(
            Path(self.run_dir),
            info.path,
            checkpoint=Path(resolved.path),
            scales=self.scales,
            image_root=info.image_root,
            out=Path(run.root / "predictions" / f"{info.path.stem}_for_{mode}_pseudo_labels.json"),
            overwrite=True,  # an intermediate of this command, re-made with the current checkpoint
            overrides=[*cap, *self.overrides],
            extra_meta={"purpose": PURPOSE},
            max_chunks=self.max_chunks,
            on_start=self.on_start,
            on_images=self.on_images,
        ).run()

    def _write(
        self,
        out_path: Path,
        pred: PredictionsOutcome,
        selector: Selector,
        selection: _Selection,
        info: Any,
        resolved: ResolvedCheckpoint,
        outcome: PseudoLabelOutcome,
    ) -> tuple[int, int]:
        """Stream the selection into ``out_path``; refuse (and remove) a file without a single label."""
        from lvisctl.data.self_training import provenance_of

        scores = ScoreSample({c["id"]: c["frequency"] for c in selection.categories})
        made_from = provenance_of(
            info.path, resolved.path, resolved.input.sha256 if resolved.registered else None
        )
        num_labels, num_images = write_pseudo_labels(
            out_path,
            iter_split_results(pred.out_path),
            selector,
            selection.categories,
            scores=scores,
            provenance=made_from,
        )
        if num_labels < HANDFUL:
            outcome.score_lines = scores.lines()
        if num_labels == 0:  # an empty file would train as "no pseudo labels" without a word
            out_path.unlink(missing_ok=True)
            _tell(self.on_note, outcome.score_lines)
            raise LvisctlError(
                f"{out_path}: not written: 0 pseudo labels kept at score >= {selection.score_thresh}; lower "
                "--score-thresh (the score distribution is above)"
            )
        return num_labels, num_images


@dataclass
class _Selection:
    """What decides which predictions become labels (and what the refusal says)."""

    score_thresh: ScoreThresholds
    categories: list[dict[str, Any]]
    category_filter: bool


def training_json_of(run: Any, checkpoint: Any) -> Path:
    """The LVIS train json a checkpoint was trained on (its manifest lineage), else the run's train
    dataset."""
    inputs = list(getattr(checkpoint, "inputs", None) or [])
    for rec in inputs:
        if rec.get("kind") == "dataset":
            return run.input_path(rec["path"])
    for rec in inputs:
        if rec.get("kind") == "external" and str(rec["path"]).endswith(".json"):
            return run.input_path(rec["path"])
    found = run.find("dataset", split="train")
    if found:
        return run.resolve(found[-1])
    raise LvisctlError(
        f"{run.manifest_path}: cannot tell which LVIS train json the checkpoint was trained on; pass --images"
    )


def _source_name(source: Path) -> str:
    return source.stem if source.suffix == ".json" else source.name


def _source_name(source: Path) -> str:
    return source.stem if source.suffix == ".json" else source.name


def _check_output(run: Any, out_rel: str, overwrite: bool, score_thresh: ScoreThresholds) -> None:
    """Refuse an existing output before any work; one made with another ``--score-thresh`` says what to do."""
    if overwrite or not run.path_of(out_rel).exists():
        return
    earlier = run.get(run.relative(run.path_of(out_rel)))
    made_with = earlier.meta.get("score_thresh") if earlier is not None else None
    if made_with is not None and made_with != str(score_thresh):
        raise LvisctlError(
            f"{run.path_of(out_rel)}: already exists, made with --score-thresh {made_with} (this run: "
            f"{score_thresh}); pass --overwrite to replace it, or --out NAME.json to keep both"
        )
    run.output_path(out_rel, overwrite=overwrite)


def _category_filter(ckpt: Mapping[str, Any], overrides: Sequence[str]) -> bool:
    """``pseudolabel.category_filter`` of the checkpoint's config with the command's overrides."""
    return bool(checkpoint_config(dict(ckpt), overrides).pseudolabel.category_filter)


def _tell(on_note: Callable[[str], None] | None, lines: Iterable[str]) -> None:
    for line in lines if on_note is not None else ():
        on_note(line)


def _image_source(
    source: str, src: Path, run: Any, categories: list[dict], image_root: Any, image_list: Any, workers: int
) -> Any:
    """The LVIS train json as it is (``lvis``), else an image-info json made from the folder / list."""
    from lvisctl.data.image_sources import ImageSource, SkipReport, image_info_for

    if source == "lvis":
        root = Path(image_root).expanduser() if image_root is not None else None
        return ImageSource(src.resolve(), root, 0, SkipReport(), converted=False)
    return image_info_for(
        src,
        out_dir=run.root / "predictions",
        categories=lambda: categories,
        image_root=image_root,
        image_list=image_list,
        workers=workers,
    )


def _images_of(source: str, run: Any, ckpt_art: Any, images: Any, image_root: Any) -> Path:
    """What to read: ``--images`` (json or folder), else for ``lvis`` the checkpoint's training json and
    for the others the ``--image-root`` folder."""
    if images is not None:
        return Path(images).expanduser()
    if source == "lvis":
        return training_json_of(run, ckpt_art)
    if image_root is None:
        raise LvisctlError(
            f"pseudolabel {source}: give --image-root DIR (a folder of images) or --images FILE"
        )
    return Path(image_root).expanduser()


def _load_images(info: Any, mode: str) -> Any:
    from lvisctl.data.lvis_cache import default_cache_dir, load_lvis_shared

    # the LVIS train json: parsed once per machine (sha256-keyed cache), as train reads it
    gt = load_lvis_shared(info.path, image_root=info.image_root, cache_dir=default_cache_dir())
    if mode == "missing" and not gt.has_annotations:
        raise LvisctlError(f"{info.path}: has no annotations; pseudolabel lvis needs the LVIS train json")
    if mode == "unlabeled" and gt.num_annotations:
        raise LvisctlError(
            f"{info.path}: has annotations; pseudolabel openimages/images is for unlabeled images"
        )
    return gt
