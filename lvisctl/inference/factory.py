"""The one predictor factory: a model and a predictor from a checkpoint and its config.

Every command that runs a model on images builds it here: ``tta-infer`` (plain, paper TTA, or several
checkpoints fused per image), ``pseudolabel`` (through ``tta-infer``'s job), ``analyze masks`` (the model
of each checkpoint) and the training-time evaluator (:func:`plain_predictor` on the model being trained).

A config is never changed in place: :func:`with_values` returns a changed copy (``--tta``, ``--scales``, the
first checkpoint's ``inference`` section for the other members of an ensemble).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lvisctl.config import Config
from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.inference.ensemble_fusion import EnsemblePredictor, EnsembleSettings
from lvisctl.inference.predictor import PostOptions, Predictor
from lvisctl.inference.tta import TTAPredictor
from lvisctl.inference.tta_settings import TTASettings, class_boost

TTA_MODES = ("plain", "paper")


# ------------------------------------------------------------------------------ config
def checkpoint_config(ckpt: dict[str, Any], overrides: Sequence[str] = ()) -> Any:
    """The checkpoint's resolved config merged over the current base (keys added since it was written get
    their defaults), then ``key=value`` ``overrides`` (e.g. ``inference.score_thresh=0.05``)."""
    from lvisctl.config import Config, load_config, upgrade_saved_config
    from lvisctl.config.loader import deep_merge, parse_overrides

    load_config(None, overrides)  # validates the overrides against the schema
    merged = upgrade_saved_config(ckpt["config"]).to_dict()
    return Config.wrap(deep_merge(merged, parse_overrides(overrides)))


def model_from_checkpoint(
    ckpt: dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    source: object = "checkpoint",
    config: Any = None,
) -> tuple[nn.Module, CategoryStats, Any]:
    """Rebuild the model of a loaded checkpoint: ``(model in eval mode on the CPU, category stats, config)``.

    ``config`` defaults to :func:`checkpoint_config` of ``ckpt`` and ``overrides``.
    """
    from lvisctl.modeling.build import build_model
    from lvisctl.modeling.weight_sources import without_backbone_weights

    config = checkpoint_config(ckpt, overrides) if config is None else config
    stats = CategoryStats.from_dict(ckpt["category_stats"])
    model = build_model(without_backbone_weights(config), stats)  # every weight is in the checkpoint
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise LvisctlError(
            f"{source}: weights do not fit the model its config builds ({first[:160]})"
        ) from None
    return model.eval(), stats, config


def load_checkpoint_model(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", overrides: Sequence[str] = ()
) -> tuple[nn.Module, CategoryStats, Any]:
    """:func:`model_from_checkpoint` for a checkpoint file (loaded weights-only); the model on ``device``."""
    from lvisctl.engine.checkpoint import load_checkpoint

    model, stats, config = model_from_checkpoint(
        load_checkpoint(path, map_location="cpu"), overrides, source=path
    )
    return model.to(device), stats, config


def with_values(cfg: Config, values: Mapping[str, Any], source: str = "command-line option") -> Config:
    """A copy of ``cfg`` with dotted keys set (``{"inference.tta.mode": "paper"}``), checked as an override
    is; ``cfg`` is read-only and unchanged."""
    return cfg.replace(dict(values), source=source)


def resolve_scales(cfg: Any, scales: Sequence[int] | None = None) -> tuple[Any, list[int]]:
    """``(config, scales)``: the scales a run uses (``inference.tta.scales`` in paper mode, else
    ``inference.scales``), with ``scales`` (``--scales``) written into that key of a copy of ``cfg``."""
    paper = cfg.inference.tta.mode == "paper"
    if scales is not None:
        key = "inference.tta.scales" if paper else "inference.scales"
        cfg = with_values(cfg, {key: [int(s) for s in scales]}, source="--scales")
    return cfg, list(cfg.inference.tta.scales if paper else cfg.inference.scales)


# ------------------------------------------------------------------------------ predictors
def plain_predictor(model: nn.Module, inference_cfg: Any, device: torch.device | str, amp: bool) -> Predictor:
    """The plain multi-scale predictor of ``inference.*`` (what training evaluates with)."""
    icfg = inference_cfg
    post = PostOptions.from_config(icfg, amp)
    return Predictor(model, device, list(icfg.scales), int(icfg.max_size), **post.as_kwargs())


def predictor_for(model: nn.Module, stats: CategoryStats, cfg: Any, device: torch.device | str) -> Any:
    """The predictor ``cfg.inference`` asks for: plain (``inference.scales``) or the paper's TTA."""
    icfg = cfg.inference
    mode = icfg.tta.mode
    if mode == "plain":
        return plain_predictor(model, icfg, device, cfg.amp)
    if mode != "paper":
        raise LvisctlError(f"inference.tta.mode: {mode!r} is not one of {', '.join(TTA_MODES)}")
    settings = TTASettings.from_config(icfg.tta)
    post = PostOptions.from_config(icfg, cfg.amp)
    return TTAPredictor(model, device, settings, class_boost(stats, settings), **post.as_kwargs())


def predictor_from_checkpoints(
    checkpoints: Sequence[tuple[Mapping[str, Any], object]],
    cfg: Any,
    device: torch.device | str,
    overrides: Sequence[str] = (),
) -> tuple[Any, CategoryStats]:
    """``[(loaded checkpoint, source), ...]`` -> ``(predictor, category stats)``.

    One checkpoint: :func:`predictor_for` with ``cfg``. Several: each model is built from its own config,
    with ``cfg.inference`` (the first checkpoint's, with overrides) for all, and their outputs are fused
    per image by :class:`lvisctl.inference.ensemble_fusion.EnsemblePredictor` (``inference.ensemble``).
    """
    predictors, first_stats = [], None
    for i, (ckpt, source) in enumerate(checkpoints):
        model_cfg = cfg
        if i > 0:
            model_cfg = with_values(checkpoint_config(dict(ckpt), overrides), {"inference": cfg.inference})
        model, stats, _ = model_from_checkpoint(dict(ckpt), source=source, config=model_cfg)
        if first_stats is None:
            first_stats = stats
        elif stats.category_map.cat_ids != first_stats.category_map.cat_ids:
            raise LvisctlError(
                f"{source}: its categories differ from those of {checkpoints[0][1]}; "
                "an ensemble needs models of the same category set"
            )
        predictors.append(predictor_for(model, stats, model_cfg, device))
    if len(predictors) == 1:
        return predictors[0], first_stats
    settings = EnsembleSettings.from_config(cfg.inference.ensemble)
    return EnsemblePredictor(predictors, settings, cfg.inference.detections_per_image), first_stats
