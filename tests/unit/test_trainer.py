"""Trainer building blocks: freezing (stage 2), partial weight loading, the optimizer, mid-epoch skip."""

import pytest
import torch
from torch import nn

from lvisctl.engine.loader import SkipSampler as _SkipSampler
from lvisctl.engine.trainer import (
    build_optimizer,
    freeze_modules,
    set_frozen_eval,
)
from lvisctl.errors import LvisctlError


def _model(num_classes=3):
    m = nn.Module()
    m.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    m.rpn = nn.Conv2d(4, 1, 1)
    m.roi_heads = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, num_classes))
    return m


SOLVER = {"base_lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4}


def test_freeze_stops_gradients_keeps_bn_in_eval_and_leaves_optimizer():
    m = _model()
    assert freeze_modules(m, ["backbone", "rpn"]) == ["backbone", "rpn"]
    m.train()
    set_frozen_eval(m, ["backbone", "rpn"])
    assert not m.backbone[1].training and m.roi_heads[0].training  # only frozen BN is in eval mode
    assert all(not p.requires_grad for p in [*m.backbone.parameters(), *m.rpn.parameters()])
    opt = build_optimizer(m, SOLVER)
    trainable = {id(p) for p in m.roi_heads.parameters()}
    assert {id(p) for p in opt.param_groups[0]["params"]} == trainable
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 1e-4
    # BN running statistics of the frozen backbone do not move in a training forward
    before = m.backbone[1].running_mean.clone()
    m.backbone(torch.randn(2, 3, 8, 8) + 5)
    assert torch.equal(before, m.backbone[1].running_mean)


def test_freeze_prefix_must_match_whole_module_names():
    m = _model()
    with pytest.raises(
        LvisctlError, match=r"train.freeze names \['neck'\].*\['backbone', 'roi_heads', 'rpn'\]"
    ):
        freeze_modules(m, ["neck"])
    with pytest.raises(LvisctlError, match="match no parameters"):
        freeze_modules(m, ["back"])  # a prefix of a name is not a module
    with pytest.raises(LvisctlError, match="no trainable parameters"):
        freeze_modules(m, ["backbone", "rpn", "roi_heads"])
        build_optimizer(m, SOLVER)


def test_skip_sampler_drops_the_consumed_prefix():
    sampler = list(range(10))
    skip = _SkipSampler(sampler, 4)
    assert list(skip) == [4, 5, 6, 7, 8, 9] and len(skip) == 6
    assert len(_SkipSampler(sampler, 12)) == 0
