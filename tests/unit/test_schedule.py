"""The lr schedule of the paper's section 3.2, checked against values computed by hand."""

import pytest
import torch

from lvisctl.config import load_config
from lvisctl.engine.schedule import WarmupStepSchedule, build_schedule, scaled_lr, set_lr
from lvisctl.errors import LvisctlError


def solver(**kw):
    base = {
        "base_lr": 0.02,
        "ref_batch": 16,
        "epochs": 24,
        "steps": [16, 22],
        "gamma": 0.1,
        "max_iter": 0,
        "step_iters": [],
        "warmup_iters": 500,
        "warmup_factor": 0.001,
    }
    return {**base, **kw}


def test_linear_scaling_rule():
    assert scaled_lr(0.02, 16) == pytest.approx(0.02)
    assert scaled_lr(0.02, 2) == pytest.approx(0.0025)  # 0.02 * 2 / 16
    assert scaled_lr(0.02, 32) == pytest.approx(0.04)
    assert scaled_lr(0.01, 8, ref_batch=4) == pytest.approx(0.02)
    with pytest.raises(ValueError):
        scaled_lr(0.02, 0)


def test_warmup_then_steps_hand_values():
    s = WarmupStepSchedule(
        lr=0.02, max_iter=100, milestones=(60, 90), gamma=0.1, warmup_iters=10, warmup_factor=0.001
    )
    expected = {
        0: 0.02 * 0.001,  # warm-up starts at lr * warmup_factor
        5: 0.02 * (0.001 + 0.999 * 5 / 10),  # = 0.01001
        9: 0.02 * (0.001 + 0.999 * 9 / 10),  # = 0.017998
        10: 0.02,
        59: 0.02,
        60: 0.002,  # first decay at the milestone itself
        89: 0.002,
        90: 0.0002,
        99: 0.0002,
    }
    for it, lr in expected.items():
        assert s.lr_at(it) == pytest.approx(lr, rel=1e-12), it
    assert s.lr_at(5) == pytest.approx(0.01001)


def test_warmup_overlapping_a_milestone_multiplies():
    s = WarmupStepSchedule(lr=1.0, max_iter=10, milestones=(2,), gamma=0.1, warmup_iters=4, warmup_factor=0.5)
    assert s.lr_at(1) == pytest.approx(0.5 + 0.5 * 1 / 4)  # 0.625, before the milestone
    assert s.lr_at(3) == pytest.approx((0.5 + 0.5 * 3 / 4) * 0.1)  # 0.0875


def test_paper_24_epoch_schedule_in_iterations():
    # 4 images per iteration -> lr 0.02 * 4 / 16 = 0.005; 100 iterations per epoch.
    s = build_schedule(solver(), iters_per_epoch=100, total_batch=4)
    assert s.lr == pytest.approx(0.005)
    assert s.max_iter == 2400
    assert s.milestones == (1600, 2200)
    assert s.lr_at(1599) == pytest.approx(0.005)
    assert s.lr_at(1600) == pytest.approx(0.0005)
    assert s.lr_at(2200) == pytest.approx(0.00005)


def test_paper_15_epoch_schedule_for_large_models():
    s = build_schedule(solver(epochs=15, steps=[11, 14]), iters_per_epoch=50, total_batch=16)
    assert (s.lr, s.max_iter, s.milestones) == (pytest.approx(0.02), 750, (550, 700))


def test_iteration_override_scales_the_epoch_milestones():
    s = build_schedule(solver(max_iter=120, warmup_iters=10), iters_per_epoch=7, total_batch=2)
    # 16/24 * 120 = 80, 22/24 * 120 = 110; the epoch length does not matter any more
    assert (s.max_iter, s.milestones) == (120, (80, 110))
    assert s.lr == pytest.approx(0.0025)
    explicit = build_schedule(solver(max_iter=120, step_iters=[50, 100]), iters_per_epoch=7, total_batch=2)
    assert explicit.milestones == (50, 100)


def test_bad_steps_and_empty_epochs_are_user_errors():
    with pytest.raises(LvisctlError, match="solver.steps"):
        build_schedule(solver(steps=[16, 30]), iters_per_epoch=10, total_batch=2)
    with pytest.raises(LvisctlError, match="no full batch"):
        build_schedule(solver(), iters_per_epoch=0, total_batch=2)


def test_state_dict_roundtrip_is_plain_data():
    s = WarmupStepSchedule(lr=0.01, max_iter=30, milestones=(20, 25), warmup_iters=5)
    state = s.state_dict()
    assert state["milestones"] == [20, 25]
    assert WarmupStepSchedule.from_state_dict(state) == s


def test_set_lr_applies_group_scale():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1]}, {"params": [p2], "lr_scale": 0.5}], lr=1.0)
    set_lr(opt.param_groups, 0.02)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.02), pytest.approx(0.01)]


def test_base_config_is_the_paper_recipe():
    cfg = load_config()
    assert cfg.solver.base_lr == 0.02 and cfg.solver.ref_batch == 16 and cfg.solver.momentum == 0.9
    assert cfg.solver.epochs == 24 and cfg.solver.steps == [16, 22] and cfg.solver.gamma == 0.1
    assert cfg.solver.weight_decay == 0.0001


def test_warmup_ends_at_the_first_decay_in_short_runs():
    from lvisctl.engine.schedule import build_schedule

    solver = {
        "epochs": 24,
        "steps": [16, 22],
        "max_iter": 12,
        "step_iters": [],
        "base_lr": 0.02,
        "ref_batch": 16,
        "gamma": 0.1,
        "warmup_iters": 500,
        "warmup_factor": 0.001,
    }
    sched = build_schedule(solver, iters_per_epoch=1, total_batch=16)
    assert sched.milestones == (8, 11) and sched.warmup_iters == 8  # round(16/24*12), round(22/24*12)
    assert sched.lr_at(8) == pytest.approx(0.002)  # warmed up, then the first x0.1
