"""Survivor masks for the paper's TTA: the model in two parts, the mask head only where the merge looks.

A TTA pass used to run the whole model, mask head included, on every one of its up to 300 detections, and
the merge then kept a few hundred of the 12 x 300. Here a pass runs backbone, RPN and box head only
(:func:`detect_only`, the eval forward of ``LvisMaskRCNN`` without ``attach_masks``) and keeps its FPN maps;
:func:`fill_masks` runs the mask head (``model.predict_masks_and_scores``, every RoI-head type, HTC's
mask flow and Mask Scoring included) for the detections the merge steps ask for, one call per pass for
the whole batch, on the boxes the full forward would have used, and maps them back with the view's
inverse transform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lvisctl.inference.test_augmentations import Transform


@dataclass
class LazyMasks:
    """What the mask head needs for a pass's detections: the model's own boxes in the view (input
    coordinates, as it made them), labels and classification scores (on its device), and the view's
    inverse."""

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    inverse: Transform


def _core(model: nn.Module) -> Any:
    return getattr(model, "module", model)  # a DDP wrapper's model


def splits(model: nn.Module) -> bool:
    """Whether ``model`` runs in parts (lvisctl's ``LvisMaskRCNN`` does; a torchvision model does not)."""
    core = _core(model)
    parts = ("extract_features", "rpn", "roi_heads", "predict_masks_and_scores")
    return all(hasattr(core, p) for p in parts) and hasattr(core.roi_heads, "detect")


def mask_size(model: nn.Module) -> int:
    """The side of the model's RoI masks (28 when it does not say)."""
    return int(getattr(getattr(_core(model), "roi_heads", None), "mask_size", 28))


def detect_only(
    model: nn.Module, inputs: list[torch.Tensor]
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``LvisMaskRCNN.forward`` in eval without the masks: per image ``boxes``, ``scores``, ``labels`` (input
    coordinates), and the FPN maps P2-P5 the mask head pools from (P6 dropped: RPN only)."""
    from lvisctl.modeling.fpn import roi_feature_maps

    core = _core(model)
    features, image_list = core.extract_features(inputs)
    proposals, _ = core.rpn(image_list, features, None)
    detections = core.roi_heads.detect(roi_feature_maps(features), proposals, image_list.image_sizes)
    return detections, {k: v for k, v in features.items() if k != "pool"}


class _HasPasses:  # typing only: lvisctl.inference.tta.ViewRun (not imported: tta imports this module)
    passes: list[Any]
    features: Mapping[str, torch.Tensor] | None


@torch.no_grad()
def fill_masks(
    model: nn.Module,
    runs: Sequence[_HasPasses],
    states: Sequence[Any],
    wanted: Sequence[torch.Tensor],
    autocast: Callable[[], AbstractContextManager[Any]],
) -> None:
    """Fill each image's mask bank (``states[i].bank``) for the raw detections ``wanted[i]`` (indices into
    the concatenation of its passes) that it does not hold yet: one mask-head call per pass (``runs[j]``)
    over every image of the batch."""
    core = _core(model)
    offsets = [[0, *torch.cumsum(torch.tensor([len(p) for p in s.passes]), 0).tolist()] for s in states]
    needs = [s.bank.missing(w) for s, w in zip(states, wanted, strict=True)]
    for j, run in enumerate(runs):
        picks = [need[s.pass_of[need] == j] for s, need in zip(states, needs, strict=True)]
        if not any(p.numel() for p in picks):
            continue
        lazies = [p.lazy for p in run.passes]
        local = [pick - offsets[i][j] for i, pick in enumerate(picks)]
        with autocast():
            probs, mask_scores = core.predict_masks_and_scores(
                run.features,
                [lz.boxes[idx] for lz, idx in zip(lazies, local, strict=True)],
                [lz.labels[idx] for lz, idx in zip(lazies, local, strict=True)],
                [lz.scores[idx] for lz, idx in zip(lazies, local, strict=True)],
            )
        for i, (state, pick) in enumerate(zip(states, picks, strict=True)):
            if pick.numel():
                masks = lazies[i].inverse.apply_roi_masks(probs[i][:, 0].float())
                state.bank.put(pick, masks, None if mask_scores is None else mask_scores[i])
