"""What a resumed run starts from, checked: the newest intact checkpoint (a damaged newer one is named and
skipped), the same config, and the same training inputs (sha256 as the manifest recorded them).

``--overwrite`` (:func:`clear_phase`) removes what a phase wrote, so it can start again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lvisctl.config import Config
from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.engine.distributed import DistInfo, barrier, broadcast_object
from lvisctl.engine.logging import print_line, tensorboard_dir
from lvisctl.errors import LvisctlError
from lvisctl.rundir import Artifact, RunDir, sha256_file


def clear_phase(run: RunDir, phase: ckpt_io.Phase, info: DistInfo) -> None:
    """``--overwrite``: unregister and delete what this phase wrote (checkpoints, config, logs, plot,
    TensorBoard events of its own folder)."""
    if info.is_main:
        for art in run.artifacts():
            if (
                art.kind in ("checkpoint", "config", "log", "plot", "metrics")
                and art.meta.get("phase") == phase.name
            ):
                path = run.path_of(art.path)  # refuses a path outside the run dir before anything goes
                run.unregister(art.path)
                path.unlink(missing_ok=True)
        (run.root / "logs" / f"metrics_{phase.name}.jsonl").unlink(missing_ok=True)
        for events in tensorboard_dir(run.root, phase.name).glob("events.out.tfevents.*"):
            events.unlink()
    barrier(info)


def saved_process_config(run: RunDir, phase: ckpt_io.Phase) -> Mapping[str, Any]:
    """The newest recorded checkpoint's config as the manifest holds it (no checkpoint is loaded), for
    what must be known before the process group exists: ``device`` and ``runtime``. Empty when the
    phase has no checkpoint (the resume then fails with its own message)."""
    from lvisctl.config import upgrade_saved_config

    art = ckpt_io.latest_checkpoint(run, phase) if run.manifest_path.is_file() else None
    if art is None or not art.config:
        return {}
    return upgrade_saved_config(art.config)


def find_resume_state(
    run: RunDir, phase: ckpt_io.Phase, resume: bool, info: DistInfo, *, overwrite: bool = False
) -> tuple[dict[str, Any], Artifact] | None:
    existing = ckpt_io.latest_checkpoint(run, phase) if info.is_main else None
    rel = broadcast_object(existing.path if existing else None, info)
    if rel is None or overwrite:
        if resume:
            raise LvisctlError(f"{run.manifest_path}: --resume given but no {phase} checkpoint is recorded")
        return None
    if not resume:
        raise LvisctlError(
            f"{run.root}: already holds {phase} checkpoints ({rel}); pass --resume to continue, "
            "--overwrite to start the phase again, --phase NAME for a new phase beside it (e.g. "
            "--phase stage1_st for self-training), or use a new --run-dir"
        )
    chosen: tuple[dict[str, Any], Artifact] | None = None
    if info.is_main:
        chosen = _newest_intact(run, phase)
    rel = broadcast_object(chosen[1].path if chosen else None, info)
    if not info.is_main:
        art = run.get(rel)
        assert art is not None
        chosen = (ckpt_io.load_checkpoint(run.path_of(rel)), art)
    barrier(info)
    return chosen


def _newest_intact(run: RunDir, phase: ckpt_io.Phase) -> tuple[dict[str, Any], Artifact]:
    """The newest checkpoint that still matches its sha256 and loads; a damaged newer one is named."""
    candidates = list(reversed(ckpt_io.stage_checkpoints(run, phase)))
    problems: list[str] = []
    for art in candidates:
        try:
            state = ckpt_io.load_checkpoint(run.resolve(art))
        except LvisctlError as err:
            problems.append(str(err))
            continue
        if problems:
            print_line(
                f"warning: {len(problems)} newer checkpoint(s) cannot be used ({problems[0]}); "
                f"resuming from the older {art.path} (iteration {art.meta.get('iteration')})"
            )
        return state, art
    raise LvisctlError(
        problems[0] if len(problems) == 1 else f"{problems[0]} (and {len(problems) - 1} older ones)"
    )


def _input_hash(run: RunDir, item: Artifact | str | Path) -> tuple[str, str]:
    """(path as the manifest records it, current sha256 of the file)."""
    if isinstance(item, Artifact):
        return item.path, sha256_file(run.artifact_path(item))
    rel = run.relative(item)
    return rel, sha256_file(run.input_path(rel))


def check_inputs_unchanged(run: RunDir, ckpt: Artifact, inputs: Sequence[Artifact | str | Path]) -> None:
    """A resume trains on the files the checkpoint was trained on (sha256 recorded in the manifest)."""
    recorded = {i["path"]: i["sha256"] for i in ckpt.inputs if "path" in i and "sha256" in i}
    for item in inputs:
        path, now = _input_hash(run, item)
        old = recorded.get(path)
        if old is not None and old != now:
            raise LvisctlError(
                f"{run.input_path(path)}: changed since {ckpt.path} was trained on it "
                f"(sha256 {old} -> {now}); "
                "resume with --allow-changed-inputs to continue on the new file, or train in a new --run-dir"
            )


def _same_files_as_saved(cfg: Config, saved: Config) -> Config:
    """A resumed run keeps the self-training files it started with: ``latest`` in the incoming config means
    the file the run resolved it to then (recorded in its saved config; their sha256 are checked too)."""
    data = cfg.to_dict().get("data", {})
    keys = [k for k in ("pseudo_labels", "extra_images") if str(data.get(k)) == "latest"]
    if not keys:
        return cfg
    out = cfg.to_dict()
    for key in keys:
        out["data"][key] = saved.to_dict().get("data", {}).get(key, "latest")
    return Config.wrap(out)


def check_resume_config(cfg: Config | None, state: Mapping[str, Any], run: RunDir) -> Config:
    from lvisctl.config import upgrade_saved_config

    # old keys moved to their current names; keys added since the checkpoint was written get defaults
    saved = upgrade_saved_config(state["config"])
    if cfg is None:
        return saved
    cfg = _same_files_as_saved(cfg, saved)
    diffs = _config_diff(saved, cfg)
    if diffs:
        shown = "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
        raise LvisctlError(
            f"{run.root}: config differs from the checkpoint it would resume ({shown}); resume without "
            "--config/overrides to keep the saved config, or train in a new --run-dir"
        )
    return cfg


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _config_diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]
