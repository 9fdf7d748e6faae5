"""Where a model's starting weights come from, and a loud account of what loaded (never silently partial).

Four rules:

* A run that starts from a checkpoint takes its ``inference.*`` keys (test scales, ...) from the
  checkpoint's config where its own config leaves the default (:func:`inherit_defaults`).
* A run that starts from a checkpoint and freezes part of the model (stage 2: ``backbone``, ``rpn``, ...)
  takes the architecture of every frozen part from the checkpoint's saved config
  (:func:`inherit_frozen_architecture`): the stage-2 config only states what stage 2 changes. A stage-2
  value that contradicts the checkpoint on a frozen part stops the run with the key named.
* Every frozen tensor must load; tensors trained from scratch are listed once ("initialised fresh: ...");
  a partial ``train.init_from`` (below :data:`MIN_LOADED_FRACTION` of the model, or another class set)
  is refused unless ``train.init_allow_partial=true`` (:func:`load_init_weights`).
* A trunk with no pretrained weights does not keep frozen (random) BatchNorm statistics or frozen random
  stages (:func:`scratch_backbone`).

:func:`prepare_config` applies the first and the last rule to a run's config and finds its starting
checkpoint (``train.init_from``: a path, ``best``, ``final`` or a phase name; stage 2: the stage-1 final
checkpoint); :func:`load_starting_weights` applies the second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvisctl.config import Config, dotted
from lvisctl.config.loader import apply_aliases
from lvisctl.data.categories import CategoryStats
from lvisctl.engine import checkpoint as ckpt_io
from lvisctl.errors import LvisctlError
from lvisctl.modeling.roi_keys import upgrade_key, upgrade_keys, upgrade_prefixes
from lvisctl.modeling.weight_sources import is_none, resolve_weights, without_backbone_weights
from lvisctl.rundir import Artifact, RunDir

# Below this fraction of the model's tensors, an init_from checkpoint is "a different model".
MIN_LOADED_FRACTION = 0.5

# The config keys that shape each freezable part (a freeze prefix covers its own entry and every entry
# below it: ``backbone`` covers ``backbone.body`` and ``backbone.fpn``). Sections are whole subtrees.
_ROI_POOL = ("model.roi_heads.sampling_ratio", "model.roi_heads.aligned")
FROZEN_ARCHITECTURE: dict[str, tuple[str, ...]] = {
    "backbone.body": ("model.pixel_mean", "model.pixel_std", "model.size_divisible", "model.backbone"),
    "backbone.fpn": ("model.fpn",),
    "rpn": ("model.rpn",),
    "roi_heads.box.extractor": (
        "model.roi_heads.roi_pool",
        "model.roi_heads.pooler_resolution",
        "model.roi_heads.deform_gamma",
        "model.roi_heads.deform_hidden_channels",
        *_ROI_POOL,
    ),
    "roi_heads.box.head": ("model.roi_heads.fc_dim", "model.roi_heads.pooler_resolution"),
    "roi_heads.mask.head": (
        "model.mask_head.type",
        "model.mask_head.num_convs",
        "model.mask_head.conv_dim",
        "model.mask_head.pooler_resolution",
        "model.mask_head.boundary",
        *_ROI_POOL,
    ),
}
# Not architecture: the file the trunk was first initialised from (the checkpoint supersedes it).
_NOT_ARCHITECTURE = ("model.backbone.weights",)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def frozen_config_keys(freeze: Sequence[str]) -> list[str]:
    """The config keys (sections or leaves) that shape the parts named by ``train.freeze``; a frozen
    sub-module (``roi_heads.box.head.mlp``) counts for the part it belongs to. Prefixes of the flat RoI-head
    layout (``roi_heads.mask_head``) name the same parts (``lvisctl.modeling.roi_keys``)."""
    keys: list[str] = []
    for part, part_keys in FROZEN_ARCHITECTURE.items():
        if any(_under(part, p) or _under(p, part) for p in upgrade_prefixes(freeze)):
            keys += [k for k in part_keys if k not in keys]
    return keys


# dotted keys of the nested config dicts (lvisctl.config.dotted, the package's one helper)
_get = dotted.get
_set = dotted.assign
_leaves = dotted.leaves_under


def inherit_frozen_architecture(
    cfg: Config, saved: Mapping[str, Any], freeze: Sequence[str], *, source: str
) -> tuple[Config, list[str]]:
    """``cfg`` with every key shaping a frozen part taken from ``saved`` (the checkpoint's config).

    A key the stage-2 config leaves at its schema default is taken from the checkpoint (and listed in
    the returned ``taken`` as ``key=value`` when it differs); a key it sets to another value than the
    checkpoint's is a contradiction: one-line error naming the key. Keys the checkpoint predates keep
    their value.
    """
    from lvisctl.config import load_config

    schema = load_config().to_dict()
    out = cfg.to_dict()
    taken: list[str] = []
    for section in frozen_config_keys(freeze):
        for key in _leaves(schema, section):
            if key in _NOT_ARCHITECTURE:
                continue
            theirs = _get(saved, key)
            if theirs is None:
                continue
            ours, default = _get(out, key), _get(schema, key)
            if _same(ours, theirs):
                continue
            if not _same(ours, default):
                part = next(
                    p
                    for p in freeze
                    if any(_under(x, upgrade_key(p)) or _under(upgrade_key(p), x) for x in _parts_of(key))
                )
                raise LvisctlError(
                    f"{source}: {key}={ours!r} contradicts the checkpoint ({theirs!r}) on the frozen "
                    f"'{part}'; frozen parts take their architecture from the checkpoint, so drop the key "
                    "from the config or train that part"
                )
            _set(out, key, theirs)
            taken.append(f"{key}={theirs!r}")
    return Config.wrap(out), taken


# Sections a run starting from a checkpoint takes from it where its own config leaves the schema default:
# how the model is tested (a stage 1 trained at 128 px is not tested at the base config's 800 px).
INHERITED_SECTIONS = ("inference",)


def inherit_defaults(cfg: Config, saved: Mapping[str, Any]) -> tuple[Config, list[str]]:
    """``cfg`` with every key of :data:`INHERITED_SECTIONS` that it leaves at the schema default taken from
    ``saved`` (the starting checkpoint's config); the ``key=value`` taken. Keys set on purpose win."""
    from lvisctl.config import load_config

    schema = load_config().to_dict()
    out = cfg.to_dict()
    taken: list[str] = []
    for key in (leaf for section in INHERITED_SECTIONS for leaf in _leaves(schema, section)):
        theirs, ours = _get(saved, key), _get(out, key)
        if theirs is None or _same(ours, theirs) or not _same(ours, _get(schema, key)):
            continue
        _set(out, key, theirs)
        taken.append(f"{key}={theirs!r}")
    return Config.wrap(out), taken


def _parts_of(key: str) -> list[str]:
    return [part for part, keys in FROZEN_ARCHITECTURE.items() if any(_under(key, k) for k in keys)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def scratch_backbone(cfg: Config, *, has_init: bool) -> tuple[Config, str | None]:
    """A trunk trained from scratch (no ``model.backbone.weights``, no checkpoint to start from) gets
    trainable norms and no frozen stages: frozen BatchNorm would freeze random statistics, and
    ``freeze_at`` would freeze random convolutions. Returns the config and the one line to print."""
    backbone = cfg.model.backbone
    spec = str(backbone.weights or "").strip()
    if has_init:
        return cfg, None
    if spec and not is_none(spec):
        resolve_weights(spec)  # fetch into the cache (or say what to place) before the data loads
        return cfg, None
    if not spec and backbone.name != "tiny":  # no paper row trains a resnet/resnest from scratch
        resolve_weights(spec)  # raises the one line: name the weights or say none
    changes = []
    out = cfg.to_dict()
    if backbone.norm == "frozen_bn":
        out["model"]["backbone"]["norm"] = "bn"
        changes.append("model.backbone.norm=bn instead of frozen_bn")
    if int(backbone.freeze_at) > 0:
        out["model"]["backbone"]["freeze_at"] = 0
        changes.append(f"model.backbone.freeze_at=0 instead of {int(backbone.freeze_at)}")
    note = f"no pretrained weights (model.backbone.weights={spec or 'none'}): the trunk trains from scratch"
    return Config.wrap(out), note + (f" ({'; '.join(changes)})" if changes else "")


@dataclass
class InitReport:
    """What :func:`load_init_weights` did, for the one-time log lines."""

    loaded: int
    total: int
    fresh: list[str] = field(default_factory=list)  # trainable modules initialised fresh
    unused: int = 0  # checkpoint tensors the model has no place for

    def lines(self, source: str) -> list[str]:
        out = [f"loaded {self.loaded} of {self.total} tensors from {source}"]
        if self.fresh:
            out.append(f"initialised fresh: {', '.join(self.fresh)}")
        if self.unused:
            out.append(f"{self.unused} checkpoint tensors have no place in this model (not used)")
        return out


def _modules(names: Sequence[str]) -> list[str]:
    """Tensor names -> their module names, in order, once each (``a.b.weight`` -> ``a.b``)."""
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name.rsplit(".", 1)[0] if "." in name else name, None)
    return list(seen)


# The classifier's width is set by the classification loss (softmax, group softmax, BAGS, EQL): stage 2
# changes it by design and retrains it, so its shape may differ from the checkpoint's.
_RESHAPE_EXPECTED = ("cls_score",)


def changed_architecture(cfg: Config, saved: Mapping[str, Any]) -> list[str]:
    """``key: checkpoint -> config`` for every key shaping a part (:data:`FROZEN_ARCHITECTURE`) that the
    run's config sets otherwise than the checkpoint's (keys the checkpoint predates left out)."""
    from lvisctl.config import load_config

    schema, ours = load_config().to_dict(), cfg.to_dict()
    sections = dict.fromkeys(k for keys in FROZEN_ARCHITECTURE.values() for k in keys)
    out = []
    for key in (leaf for section in sections for leaf in _leaves(schema, section)):
        theirs, mine = _get(saved, key), _get(ours, key)
        if key not in _NOT_ARCHITECTURE and theirs is not None and not _same(theirs, mine):
            out.append(f"{key}: {theirs!r} -> {mine!r}")
    return out


def _refuse_reshaped(
    candidates: Sequence[str],
    state: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    source: str,
    changed: Sequence[str],
) -> None:
    """Trained tensors the checkpoint has but cannot give because the config changed their shape (a
    stage-2 ``model.roi_heads.fc_dim`` other than stage 1's) would silently restart from scratch: refuse,
    naming them, unless ``train.init_allow_partial``."""
    reshaped = [k for k in candidates if not any(f".{part}." in f".{k}" for part in _RESHAPE_EXPECTED)]
    if not reshaped:
        return
    shown = "; ".join(
        f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
        for k in reshaped[:3]
    )
    more = f" and {len(reshaped) - 3} more" if len(reshaped) > 3 else ""
    why = f" ({'; '.join(changed)})" if changed else ""
    raise LvisctlError(
        f"{source}: {len(reshaped)} trained tensors would be thrown away because this config changes their "
        f"shape{why}: {shown}{more}; use the checkpoint's values, or set train.init_allow_partial=true "
        "to train them from scratch"
    )


def load_init_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    frozen: Sequence[str] = (),
    allow_partial: bool = False,
    same_classes: bool = True,
    changed: Sequence[str] = (),
) -> InitReport:
    """Load the tensors of ``state`` whose name and shape match ``model``, loudly.

    Refuses (one line) when a frozen tensor does not load (never), and unless ``allow_partial`` when a
    trained tensor of the checkpoint does not fit the model's shape (the classifier excepted), when the
    class sets differ or when fewer than :data:`MIN_LOADED_FRACTION` of the model's tensors load.
    ``changed``: the config keys that differ from the checkpoint's (:func:`changed_architecture`), named
    in that error.
    """
    own = model.state_dict()
    # checkpoints and imports of the flat RoI-head layout name today's tensors by their old keys
    state = upgrade_keys(state)
    frozen = upgrade_prefixes(frozen)
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in matching]
    bad_frozen = [k for k in missing if any(_under(k, p) for p in frozen)]
    if bad_frozen:
        key = bad_frozen[0]
        why = (
            f"shape {tuple(state[key].shape)} in the checkpoint, {tuple(own[key].shape)} in the model"
            if key in state
            else "not in the checkpoint"
        )
        raise LvisctlError(
            f"{source}: {len(bad_frozen)} frozen tensors do not load (e.g. {key}: {why}); a frozen part "
            "must come from the checkpoint (same architecture), or it would stay random"
        )
    hint = "set train.init_allow_partial=true to train the rest from scratch"
    if not same_classes and not allow_partial:
        raise LvisctlError(
            f"{source}: the checkpoint was trained on another category set than the training data, so "
            f"its class-dependent heads cannot carry over; {hint}"
        )
    if not matching:
        raise LvisctlError(f"{source}: the checkpoint shares no weights with this model")
    if len(matching) < MIN_LOADED_FRACTION * len(own) and not allow_partial:
        raise LvisctlError(
            f"{source}: only {len(matching)} of {len(own)} model tensors match the checkpoint "
            f"(a different architecture?); {hint}"
        )
    if not allow_partial:
        _refuse_reshaped([k for k in missing if k in state], state, own, source, changed)
    model.load_state_dict(matching, strict=False)
    fresh = missing  # none of them frozen (checked above): they train from their initialisation
    unused = sum(1 for k in state if k not in matching)
    return InitReport(len(matching), len(own), _modules(fresh), unused)


# ------------------------------------------------------------------------------------------ a run's start
@dataclass
class StartingPoint:
    """The checkpoint a run starts from (not a resume): its manifest entry or path, and its contents."""

    source: Artifact | Path
    path: Path
    state: dict[str, Any]


def model_build_config(cfg: Config, from_checkpoint: bool) -> Config:
    """The config the model is built from: a model whose weights all come from a checkpoint does not
    read the ImageNet trunk file (it may not even exist where stage 2 runs)."""
    return without_backbone_weights(cfg) if from_checkpoint else cfg


def init_source(cfg: Config, run: RunDir, phase: ckpt_io.Phase) -> Artifact | Path | None:
    """``train.init_from`` (a path, or ``best`` / ``final`` / a phase name of this run), or for stage > 1
    the newest final checkpoint of the stage-1 lineage (:mod:`lvisctl.rundir.defaults`)."""
    spec = str(cfg.train.init_from or "")
    if spec:
        previous = phase.stage - 1 if phase.stage > 1 and spec in ("best", "final") else None
        return ckpt_io.resolve_checkpoint(run, spec, stage=previous)
    if phase.stage == 1:
        return None
    from lvisctl.rundir.defaults import announce, default_start_checkpoint

    # The newest final of the stage-1 lineage (self-training continues stage 1), printed before it loads.
    choice = default_start_checkpoint(run, choose="train.init_from=")
    return announce(choice, f"{phase} starts from").artifact


def check_head_type(cfg: Config, saved: Mapping[str, Any], where: str) -> None:
    """A stage-1 HTC model fine-tuned with a Mask R-CNN config (or the reverse) would train every RoI head
    from scratch: refuse it, unless the user allows a partial start."""
    theirs = str(_get(saved, "model.roi_heads.type") or "standard")
    ours = str(cfg.model.roi_heads.get("type", "standard"))
    if theirs != ours and not bool(cfg.train.init_allow_partial):
        raise LvisctlError(
            f"{where}: model.roi_heads.type is {theirs!r} there but {ours!r} in this config, so no RoI head "
            f"would load; use a {theirs} config (e.g. configs/stage2/htc_*.yaml for htc) or set "
            "train.init_allow_partial=true to train new heads"
        )


def prepare_config(
    cfg: Config, run: RunDir, phase: ckpt_io.Phase
) -> tuple[Config, list[str], StartingPoint | None]:
    """The config a run trains with, the lines to print once, and the checkpoint it starts from.

    Frozen parts take their architecture from the starting checkpoint's config; a trunk with neither
    ImageNet weights nor a starting checkpoint trains with plain BatchNorm and no frozen stages.
    """
    notes: list[str] = []
    source = init_source(cfg, run, phase)
    init = None
    if source is not None:
        path = run.resolve(source) if isinstance(source, Artifact) else source
        init = StartingPoint(source, path, ckpt_io.load_checkpoint(path))
        freeze = list(cfg.train.freeze)
        where = source.path if isinstance(source, Artifact) else str(path)
        saved = apply_aliases(init.state["config"], f"{where} config")  # old key names moved
        check_head_type(cfg, saved, where)
        if freeze:
            cfg, taken = inherit_frozen_architecture(cfg, saved, freeze, source=where)
            if taken:
                notes.append(f"frozen parts ({', '.join(freeze)}) built as in {where}: {', '.join(taken)}")
        cfg, taken = inherit_defaults(cfg, saved)
        if taken:
            notes.append(f"test settings taken from {where} (not set in this config): {', '.join(taken)}")
    cfg, note = scratch_backbone(cfg, has_init=init is not None)
    if note:
        notes.append(note)
    return cfg, notes, init


def load_starting_weights(
    model: nn.Module, init: StartingPoint, cfg: Config, stats: CategoryStats
) -> list[str]:
    """:func:`load_init_weights` of the starting checkpoint into ``model``; the lines to print once."""
    where = init.source.path if isinstance(init.source, Artifact) else str(init.path)
    theirs = list(init.state.get("category_stats", {}).get("cat_ids", []))
    report = load_init_weights(
        model,
        init.state["model"],
        source=where,
        frozen=list(cfg.train.freeze),
        allow_partial=bool(cfg.train.init_allow_partial),
        same_classes=theirs == list(stats.to_dict()["cat_ids"]),
        changed=changed_architecture(cfg, apply_aliases(init.state.get("config") or {}, f"{where} config")),
    )
    return report.lines(where)
