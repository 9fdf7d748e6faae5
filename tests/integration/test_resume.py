"""Kill -9 a training run after its first checkpoint, resume it, and get bit-identical final weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lvisctl.engine.trainer import NonFiniteLossError
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from lvisctl.training import train
from tests.helpers.engine_standins import data_builder, model_builder, tiny_config

REPO = Path(__file__).resolve().parents[2]


def _spawn(run_dir, sleep, *items):
    cmd = [sys.executable, "-m", "tests.helpers.engine_standins", str(run_dir), str(sleep), *items]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _checkpoints(run_dir):
    manifest = Path(run_dir) / "manifest.json"
    if not manifest.exists():
        return []
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return []
    return [a for a in data["artifacts"] if a["kind"] == "checkpoint"]


def _final_model(run_dir):
    return torch.load(Path(run_dir) / "checkpoints" / "stage1_final.pt", weights_only=True)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, workers):
    # 3 epochs of 6 iterations; checkpoints every 4 -> the kill lands mid-epoch.
    # log every 3, checkpoint every 4: the kill lands inside a logging window, which must survive too
    items = [
        "solver.max_iter=16",
        f"train.num_workers={workers}",
        "train.checkpoint_period=4",
        "train.log_period=3",
    ]
    ref = _spawn(tmp_path / "ref", 0.0, *items)
    assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()

    killed = tmp_path / "killed"
    proc = _spawn(killed, 0.15, *items)
    deadline = time.time() + 240
    while not _checkpoints(killed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done = _checkpoints(killed)
    assert done and not any(a["meta"]["final"] for a in done), "killed too late: no mid-run checkpoint"

    resumed = _spawn(killed, 0.0, *items, "--resume")
    out = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, out
    _assert_same_weights(_final_model(tmp_path / "ref"), _final_model(killed))
    # the loss history survives the resume as well: same logged values as the uninterrupted run
    ref_hist = torch.load(tmp_path / "ref/checkpoints/stage1_final.pt", weights_only=True)["history"]
    new_hist = torch.load(killed / "checkpoints/stage1_final.pt", weights_only=True)["history"]
    assert ref_hist == new_hist


def test_resume_of_finished_run_is_a_no_op_and_fresh_train_refuses(tmp_path):
    kw = {"build_model": model_builder(), "build_data": data_builder()}
    cfg = tiny_config(**{"solver.max_iter": 4})
    first = train(cfg, tmp_path, **kw)
    again = train(cfg, tmp_path, resume=True, **kw)
    assert again.skipped and again.checkpoint == first.checkpoint
    with pytest.raises(LvisctlError, match="already holds stage 1 checkpoints") as err:
        train(cfg, tmp_path, **kw)
    assert "--phase NAME for a new phase beside it (e.g. --phase stage1_st" in str(err.value)
    with pytest.raises(LvisctlError, match=r"config differs .*solver.max_iter: 4 -> 6"):
        train(tiny_config(**{"solver.max_iter": 6}), tmp_path, resume=True, **kw)


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(**{"solver.max_iter": 10, "train.checkpoint_period": 3})
    # forward call 5 -> iteration 5 has a NaN objectness loss; checkpoint at 3 is the last good one
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg, tmp_path, build_model=model_builder(nan_at=5), build_data=data_builder())
    msg = str(err.value)
    assert "\n" not in msg
    assert "stopped at iteration 5: loss_objectness is nan" in msg
    assert "last good checkpoint: checkpoints/stage1_iter0000003.pt" in msg
    paths = sorted(a.path for a in RunDir(tmp_path).artifacts("checkpoint"))
    assert paths == ["checkpoints/stage1_iter0000003.pt"]
    state = torch.load(tmp_path / paths[0], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_cli_sigkill_resume_with_real_model_and_data(tmp_path):
    """The same with ``lvisctl train``, the real model, synthetic LVIS, RFS, Mosaic/rotation, 1 worker."""
    from lvisctl.data.synth import generate_synthetic_lvis
    from tests.helpers.engine_standins import DEMO_CONFIG, register_train_json, tiny_items

    data = generate_synthetic_lvis(tmp_path / "data", preset="tiny", seed=0)
    items = tiny_items(**{"solver.max_iter": 10, "train.checkpoint_period": 3, "train.num_workers": 1})
    runs = {name: tmp_path / name for name in ("ref", "killed")}
    for run_dir in runs.values():
        register_train_json(run_dir, data["train"])

    def cli(run_dir, *extra):
        cmd = [sys.executable, "-m", "lvisctl", "train", "--run-dir", str(run_dir), *extra]
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    ref = cli(runs["ref"], "--config", str(DEMO_CONFIG), *items)
    assert ref.wait(timeout=600) == 0, ref.stdout.read().decode()
    proc = cli(runs["killed"], "--config", str(DEMO_CONFIG), *items)
    while not _checkpoints(runs["killed"]) and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not any(a["meta"]["final"] for a in _checkpoints(runs["killed"])), "killed too late"
    resumed = cli(runs["killed"], "--resume")  # the saved config is used
    out = resumed.communicate(timeout=600)[0].decode()
    assert resumed.returncode == 0, out
    _assert_same_weights(_final_model(runs["ref"]), _final_model(runs["killed"]))


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """A finite loss whose gradient overflows makes inf weights: the checkpoint step refuses them."""

    def overflowing(cfg, stats):
        model = model_builder()(cfg, stats)
        model.rpn.weight.register_hook(lambda g: g * float("inf") if model.calls >= 4 else g)
        return model

    cfg = tiny_config(**{"solver.max_iter": 10, "train.checkpoint_period": 2})
    with pytest.raises(NonFiniteLossError, match=r"iteration 4: weights rpn.weight are not finite") as err:
        train(cfg, tmp_path, build_model=overflowing, build_data=data_builder())
    assert "last good checkpoint: checkpoints/stage1_iter0000002.pt" in str(err.value)
    assert [a.path for a in RunDir(tmp_path).artifacts("checkpoint")] == ["checkpoints/stage1_iter0000002.pt"]
