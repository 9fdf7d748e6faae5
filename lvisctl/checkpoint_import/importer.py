"""``import_checkpoint``: a torchvision / mmdet / detectron2 Mask R-CNN file -> a final stage-1 checkpoint.

Order of work (nothing is written before the last step):

1. read the file without executing code (``reader``), find its state dict and framework (``layouts``);
2. rename and convert the tensors, and derive the config: the chosen config, then the architecture read
   from the weights (trunk depth / groups, FPN width, head sizes), then the framework's conventions
   (pixel statistics, RoIAlign, anchors, ...), then the user's overrides;
3. the target categories: the run's training data, else the LVIS v1 table; the classifier (and the
   class-specific box / mask outputs) is kept when its classes are the same in the same order, else
   re-initialised, and the report says which;
4. every other weight of ``build_model(cfg)`` must be filled with the right shape (else a one-line error),
   the model loads the result strictly, and the checkpoint + a mapping report are written and registered,
   with the source file (sha256) as input.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lvisctl.checkpoint_import.categories import classes_match, lvis_v1_stats
from lvisctl.checkpoint_import.layouts import (
    FRAMEWORKS,
    MAPPERS,
    REQUIRED,
    MappedModel,
    _first_stage,
    detect_framework,
    is_class_key,
    key_prefixes,
)
from lvisctl.checkpoint_import.reader import LoadedFile, as_tensor_dict, read_checkpoint_file
from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError, printable
from lvisctl.modeling.roi_keys import upgrade_keys
from lvisctl.rundir import Artifact, RunDir

GROUPS = (
    ("backbone.body", "trunk"),
    ("backbone.fpn", "fpn"),
    ("rpn", "rpn"),
    ("roi_heads.box.head", "box head"),
    ("roi_heads.mask.head", "mask head"),
)
REPORT_REL = "checkpoints/stage1_final.import.json"


@dataclass
class ImportReport:
    source: str
    sha256: str
    framework: str
    classes: str
    target: str
    classifier: str  # "kept" | "re-initialised (...)"
    groups: dict[str, dict[str, int]]
    overrides: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    skipped_objects: list[str] = field(default_factory=list)
    unused_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ImportResult:
    checkpoint: Artifact
    report: ImportReport
    report_path: Path


# ------------------------------------------------------------------------------------------ reading
def _split_file(loaded: LoadedFile, path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The state dict and (mmdet) meta of a read file; lvisctl's own checkpoints are refused."""
    obj = loaded.obj
    if not isinstance(obj, dict):
        raise LvisctlError(f"{path}: not a checkpoint (top level is {type(obj).__name__}, not a dict)")
    if obj.get("format") == "lvisctl-checkpoint":
        raise LvisctlError(
            f"{path}: already an lvisctl checkpoint; use it directly (train.init_from / --checkpoint)"
        )
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return as_tensor_dict(obj[key]), meta
    return as_tensor_dict(obj), meta


def refuse_non_finite(tensors: dict[str, Tensor], path: Path) -> None:
    """NaN / Inf weights (a corrupt or bit-flipped file) would be written and trained on: refused."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise LvisctlError(
            f"{path}: {len(bad)} of {len(tensors)} tensors hold NaN or Inf values "
            f"(e.g. {', '.join(bad[:3])}); "
            "a corrupt file? nothing was written"
        )


def _map(
    tensors: dict[str, Tensor], meta: dict | None, framework: str, path: Path, **opts: Any
) -> MappedModel:
    keys = set(tensors)
    if not tensors:
        raise LvisctlError(f"{path}: no tensors found (not a model checkpoint)")
    found = detect_framework(keys)
    if framework == "auto":
        if found is None:
            raise LvisctlError(f"{path}: unknown checkpoint layout (key prefixes: {key_prefixes(keys)})")
        framework = found
    elif framework not in FRAMEWORKS:
        raise LvisctlError(f"--from {framework}: choose auto, {', '.join(FRAMEWORKS)}")
    elif found != framework:
        raise LvisctlError(
            f"{path}: not a {framework} Mask R-CNN layout (key prefixes: {key_prefixes(keys)})"
        )
    stripped = {k.removeprefix("module."): v for k, v in tensors.items()}
    normalised = {_first_stage(k) for k in stripped}
    missing = [k for k in REQUIRED[framework] if k not in normalised]
    if missing:
        raise LvisctlError(f"{path}: {framework} checkpoint without a Mask R-CNN head (no {missing[0]})")
    try:
        return MAPPERS[framework](stripped, meta=meta, **opts)
    except KeyError as err:
        raise LvisctlError(
            f"{path}: {framework} checkpoint lacks {err.args[0]} (key prefixes: {key_prefixes(keys)})"
        ) from None
    except (ValueError, IndexError, RuntimeError) as err:  # a weight of an impossible shape
        raise LvisctlError(
            f"{path}: {framework} checkpoint with a malformed weight ({printable(str(err))})"
        ) from None


# ------------------------------------------------------------------------------------------ config
def architecture_overrides(t: dict[str, Tensor]) -> dict[str, Any]:
    """Trunk depth / width, FPN width, RPN and head sizes as read from the mapped weights."""
    out: dict[str, Any] = {}
    blocks = {int(m[1]) for k in t if (m := re.match(r"backbone\.body\.stages\.2\.(\d+)\.", k))}
    if blocks:
        out["model.backbone.name"] = _trunk_name(t, len(blocks))
    if "backbone.fpn.inner_blocks.0.0.weight" in t:
        out["model.fpn.out_channels"] = int(t["backbone.fpn.inner_blocks.0.0.weight"].shape[0])
    convs = {k for k in t if re.fullmatch(r"rpn\.head\.conv\.\d+\.0\.weight", k)}
    if convs:
        out["model.rpn.head_convs"] = len(convs)
    if "roi_heads.box_head.mlp.fc6.weight" in t:
        fc6 = t["roi_heads.box_head.mlp.fc6.weight"]
        out["model.roi_heads.fc_dim"] = int(fc6.shape[0])
        channels = out.get("model.fpn.out_channels", 256)
        out["model.roi_heads.pooler_resolution"] = round((fc6.shape[1] / channels) ** 0.5)
    elif "roi_heads.box_head.mlp.fc.weight" in t:
        out["model.roi_heads.fc_dim"] = int(t["roi_heads.box_head.mlp.fc.weight"].shape[0])
    mask = [k for k in t if re.fullmatch(r"roi_heads\.mask_head\.convs\.\d+\.weight", k)]
    if mask:
        out["model.mask_head.num_convs"] = len(mask)
        out["model.mask_head.conv_dim"] = int(t["roi_heads.mask_head.convs.0.weight"].shape[0])
    return out


def _trunk_name(t: dict[str, Tensor], stage4_blocks: int) -> str:
    conv2 = t.get("backbone.body.stages.0.0.conv2.weight")
    if "backbone.body.stages.0.0.conv3.weight" not in t:
        return "resnet18"
    groups = int(conv2.shape[0] // conv2.shape[1]) if conv2 is not None else 1
    if groups == 1:
        return {6: "resnet50", 23: "resnet101"}.get(stage4_blocks, f"resnet with {stage4_blocks} res4 blocks")
    return {32: "resnext101_32x4d", 64: "resnext101_64x4d"}.get(groups, f"resnext with {groups} groups")


def _dotted(overrides: dict[str, Any]) -> list[str]:
    return [f"{k}={_yaml(v)}" for k, v in overrides.items()]


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return str(value)


def build_config(config: Path | None, mapped: MappedModel, overrides: Sequence[str]):
    """config file -> architecture from the weights -> framework conventions -> the user's overrides."""
    from lvisctl.config import load_config

    derived = {**architecture_overrides(mapped.tensors), **mapped.overrides}
    cfg = load_config(config, [*_dotted(derived), *overrides])
    return cfg, derived


# ------------------------------------------------------------------------------------------ categories
def target_categories(cfg, run: RunDir) -> tuple[CategoryStats, str]:
    """The run's training categories (as ``train`` finds them), else the LVIS v1 table."""
    from lvisctl.data.lvis import load_lvis
    from lvisctl.data.train_data import resolve_train_annotations

    has_data = bool(str(cfg.get("data", {}).get("train", "") or "")) or (
        run.manifest_path.exists() and bool(run.artifacts("dataset"))
    )
    if not has_data:
        return lvis_v1_stats(), "LVIS v1 table (1,203 classes; the run has no training data)"
    source = resolve_train_annotations(cfg, run)
    path = run.artifact_path(source) if isinstance(source, Artifact) else source
    stats = load_lvis(path).category_stats()
    return stats, f"training data {path} ({stats.num_classes} classes)"


# ------------------------------------------------------------------------------------------ mapping
def _group(key: str) -> str:
    for prefix, name in GROUPS:
        if key.startswith(prefix + "."):
            return name
    return "other"


def fill_state(
    own: dict[str, Tensor], mapped: MappedModel, keep_classifier: bool, path: Path
) -> tuple[dict[str, Tensor], dict[str, dict[str, int]], list[str]]:
    """lvisctl state dict filled from ``mapped``; per-group counts; unused source keys."""
    groups: dict[str, dict[str, int]] = {}

    def count(key: str, what: str) -> None:
        groups.setdefault(_group(key), {"loaded": 0, "re-initialised": 0, "unused": 0})[what] += 1

    # the layouts write the flat RoI-head names (roi_heads.box_head.*); the model has today's
    tensors = upgrade_keys(mapped.tensors)
    state, missing, wrong = dict(own), [], []
    for key, value in own.items():
        src = tensors.get(key)
        if is_class_key(key, value) and not keep_classifier:
            count(key, "re-initialised")
        elif src is None:
            missing.append(key)
        elif tuple(src.shape) != tuple(value.shape):
            wrong.append(f"{key} {tuple(src.shape)} vs {tuple(value.shape)}")
        else:
            state[key] = src.to(value.dtype).clone()
            count(key, "loaded")
    if missing or wrong:
        detail = (wrong + missing)[:2]
        raise LvisctlError(
            f"{path}: does not fit the lvisctl model ({len(missing)} weights missing, {len(wrong)} of "
            f"another shape, e.g. {'; '.join(detail)}); check --config / overrides"
        )
    unused = sorted(set(k for k in tensors if k not in own))
    for key in unused:
        count(key, "unused")
    return state, groups, unused


def _refuse_existing(run: RunDir, rel_paths: Sequence[str], overwrite: bool) -> None:
    # the generic message suggests --out, which import-checkpoint has not: its outputs are fixed names
    for rel in rel_paths:
        if not overwrite and run.path_of(rel).exists():
            raise LvisctlError(
                f"{run.path_of(rel)}: already exists; pass --overwrite to replace it or import into "
                "another --run-dir"
            )


def import_checkpoint(
    source: str | Path,
    run_dir: str | Path,
    *,
    framework: str = "auto",
    config: Path | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    input_format: str | None = None,
    stride_in_1x1: bool | None = None,
) -> ImportResult:
    """Import ``source`` into ``run_dir`` as ``checkpoints/stage1_final.pt`` (see the module docstring)."""
    from lvisctl.engine.checkpoint import checkpoint_relpath
    from lvisctl.rundir.outputs import refuse_inputs_as_outputs

    path = Path(source).expanduser()
    loaded = read_checkpoint_file(path)
    tensors, meta = _split_file(loaded, path)
    refuse_non_finite(tensors, path)
    mapped = _map(tensors, meta, framework, path, input_format=input_format, stride_in_1x1=stride_in_1x1)
    cfg, derived = build_config(config, mapped, overrides)
    run = RunDir(run_dir)
    # The stage-1 phase lock for the whole import, as `train --stage 1` holds it: an import into a run that
    # is training (or a second import) stops at once. The existence checks run inside it, so a writer
    # that finished a moment ago is not replaced without --overwrite.
    with run.phase_lock("stage1"):
        # Only a recorded stage-1 final checkpoint is the user's (from train or a finished import); files
        # there without that record are what an import or train killed mid-way left, redone by a rerun.
        replace = overwrite or run.get(checkpoint_relpath(1, 0, True)) is None
        _refuse_existing(run, [checkpoint_relpath(1, 0, True), REPORT_REL], replace)
        ckpt_path = run.output_path(checkpoint_relpath(1, 0, True), overwrite=replace)
        report_path = run.output_path(REPORT_REL, overwrite=replace)
        refuse_inputs_as_outputs([ckpt_path, report_path], [path])
        return _import_locked(run, path, loaded, tensors, mapped, cfg, derived, report_path)


def _import_locked(run, path, loaded, tensors, mapped, cfg, derived, report_path) -> ImportResult:
    from lvisctl.engine.checkpoint import save_checkpoint
    from lvisctl.modeling.build import build_model
    from lvisctl.modeling.weight_sources import without_backbone_weights
    from lvisctl.rundir import atomic_write_json, sha256_file

    n_source = len(tensors)
    stats, target_desc = target_categories(cfg, run)
    keep = classes_match(mapped.classes, stats)
    torch.manual_seed(int(cfg.seed))  # re-initialised layers are reproducible
    model = build_model(without_backbone_weights(cfg), stats)  # the checkpoint fills every weight
    state, groups, unused_mapped = fill_state(model.state_dict(), mapped, keep, path)
    model.load_state_dict(state)  # strict: every key of the model is in ``state``
    unused_source = sorted(k for k in tensors if k.removeprefix("module.") not in mapped.used)
    for _key in unused_source:
        groups.setdefault("other", {"loaded": 0, "re-initialised": 0, "unused": 0})["unused"] += 1
    source_desc = mapped.classes.description or mapped.classes.count
    classifier = "kept" if keep else f"re-initialised ({source_desc} -> {stats.num_classes} target classes)"
    report = ImportReport(
        source=str(path.resolve()),
        sha256=sha256_file(path),
        framework=mapped.framework,
        classes=mapped.classes.description,
        target=target_desc,
        classifier=classifier,
        groups=groups,
        overrides=derived,
        notes=list(mapped.notes),
        skipped_objects=loaded.skipped,
        unused_examples=(unused_source + unused_mapped)[:10],
    )
    report.notes.append(f"{n_source} source tensors")
    ckpt = {
        "stage": 1,
        "phase": "stage1",
        "final": True,
        "iteration": 0,
        "epoch": 0,
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "category_stats": stats.to_dict(),
        "history": [],
        "imported_from": {"path": report.source, "sha256": report.sha256, "framework": report.framework},
    }
    # the report first: the checkpoint's manifest entry is the one commit point of an import (see above)
    atomic_write_json(report_path, report.to_dict())
    run.register("report", report_path, inputs=[path], meta={"import": mapped.framework})
    try:
        artifact = save_checkpoint(run, ckpt, inputs=[path])
    except Exception:  # a full disk: no report of an import that did not happen (a kill: the rerun redoes it)
        run.unregister(run.relative(report_path))
        report_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder, when the report was all it held
            report_path.parent.rmdir()
        raise
    return ImportResult(artifact, report, report_path)
