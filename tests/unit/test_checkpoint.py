"""Checkpoint files: weights-only loadable, RNG states restorable, registered, pruned, errors on garbage."""

import random

import numpy as np
import pytest
import torch

from lvisctl.engine import checkpoint as ck
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir


def _state(stage=1, iteration=10, final=False):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {
        "stage": stage,
        "final": final,
        "iteration": iteration,
        "epoch": 0,
        "epoch_position": iteration,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": {"lr": 0.1},
        "scaler": {},
        "rng": [ck.capture_rng_state()],
        "history": [{"iteration": 1, "loss": 0.5}],
        "config": {"seed": 0},
        "category_stats": {"cat_ids": [1]},
    }


def _draw():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    _draw()
    state = ck.capture_rng_state()
    expected = _draw()
    torch.save(state, tmp_path / "rng.pt")
    _draw()  # move every generator on
    ck.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draw() == expected


def test_save_registers_and_loads_weights_only(tmp_path):
    run = RunDir(tmp_path / "run")
    art = ck.save_checkpoint(run, _state(iteration=10))
    assert art.path == "checkpoints/stage1_iter0000010.pt"
    assert art.kind == "checkpoint"
    assert art.meta == {"stage": 1, "phase": "stage1", "iteration": 10, "epoch": 0, "final": False}
    raw = torch.load(run.path_of(art.path), weights_only=True)
    assert raw["format"] == "lvisctl-checkpoint" and raw["iteration"] == 10
    loaded = ck.load_checkpoint(run.path_of(art.path))
    assert loaded["model"]["weight"].shape == (2, 3)
    assert set(loaded["optimizer"]) == {"state", "param_groups"}
    final = ck.save_checkpoint(run, _state(iteration=12, final=True))
    assert final.path == "checkpoints/stage1_final.pt"
    assert ck.latest_checkpoint(run, 1).path == final.path
    assert ck.latest_checkpoint(run, 1, final=False).path == art.path
    assert ck.latest_checkpoint(run, 2) is None
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))  # no temporary left behind


def test_prune_keeps_newest_periodic_and_all_finals(tmp_path):
    run = RunDir(tmp_path / "run")
    for it in (5, 10, 15, 20):
        ck.save_checkpoint(run, _state(iteration=it))
    ck.save_checkpoint(run, _state(iteration=20, final=True))
    removed = ck.prune_checkpoints(run, 1, keep=2)
    assert removed == ["checkpoints/stage1_iter0000005.pt", "checkpoints/stage1_iter0000010.pt"]
    left = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert left == ["stage1_final.pt", "stage1_iter0000015.pt", "stage1_iter0000020.pt"]
    assert sorted(a.path for a in run.artifacts("checkpoint")) == [f"checkpoints/{n}" for n in left]


def test_load_rejects_garbage_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LvisctlError, match="bad.pt: not a loadable checkpoint"):
        ck.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(1)}, foreign)
    with pytest.raises(LvisctlError, match="missing model, config, category_stats, stage, iteration"):
        ck.load_checkpoint(foreign)
    with pytest.raises(LvisctlError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "absent.pt")
    truncated = tmp_path / "truncated.pt"
    torch.save(_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(LvisctlError, match="not a loadable checkpoint"):
        ck.load_checkpoint(truncated)


def test_named_phase_has_its_own_files_and_lookups(tmp_path):
    run = RunDir(tmp_path / "run")
    ck.save_checkpoint(run, {**_state(iteration=5), "stage": 2, "final": True})
    bags = ck.save_checkpoint(
        run, {**_state(iteration=7), "stage": 2, "phase": "finetune_bags", "final": True}
    )
    assert bags.path == "checkpoints/finetune_bags_final.pt"
    assert bags.meta["phase"] == "finetune_bags" and bags.meta["stage"] == 2
    assert ck.latest_checkpoint(run, 2).path == "checkpoints/stage2_final.pt"
    assert ck.latest_checkpoint(run, ck.Phase(2, "finetune_bags")).path == bags.path
    assert str(ck.Phase(2, "finetune_bags")) == "finetune_bags (stage 2)" and str(ck.Phase(1)) == "stage 1"
