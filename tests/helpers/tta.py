"""Hand-made TTA passes and settings: what the paper-TTA tests (test_tta, test_tta_plugins) build on."""

from __future__ import annotations

import math

import torch

from lvisctl.inference.tta import Pass, TTASettings
from tests.helpers.inference import OFF

R = 56  # RoI mask side used in these passes


def make_pass(boxes, scores, labels, scale, *, factor=1.0, masks=None, view=(), mask_scores=None):
    n = len(scores)
    return Pass(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        scores=torch.tensor(scores, dtype=torch.float32),
        labels=torch.tensor(labels, dtype=torch.int64),
        roi_masks=torch.ones((n, R, R)) if masks is None else masks,
        scale=scale,
        view=view,
        factor=factor,
        mask_scores=None if mask_scores is None else torch.tensor(mask_scores),
    )


def settings(**kw):
    base = dict(scales=(400, 1400), valid_ranges=((64, math.inf), (0, 128)), **OFF)
    base.update(kw)
    return TTASettings(**base)


def roi(kind):
    m = torch.zeros((R, R))
    if kind == "diagonal":  # a thin stroke: ~3/56 of the box
        for i in range(R):
            m[i, max(i - 1, 0) : i + 2] = 1
    elif kind == "left":  # a thin vertical stick along the left edge
        m[:, :6] = 1
    elif kind == "full":
        m[:] = 1
    elif kind == "top":  # compact, but not the full box
        m[:42] = 1
    return m
