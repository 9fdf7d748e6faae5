"""DDP on CPU: two gloo processes train the real model; both end with identical weights, rank 0 alone
writes the manifest."""

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lvisctl.data.synth import generate_synthetic_lvis
from lvisctl.rundir import RunDir
from tests.helpers.engine_standins import ddp_worker, register_train_json


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_end_identical(tmp_path):
    paths = generate_synthetic_lvis(tmp_path / "data", preset="tiny", seed=0)
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    register_train_json(run_dir, paths["train"])
    mp.spawn(ddp_worker, args=(2, _free_port(), str(run_dir), str(out)), nprocs=2, join=True)

    w0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    # and the final checkpoint holds those weights
    final = torch.load(run_dir / "checkpoints" / "stage1_final.pt", weights_only=True)
    assert final["world_size"] == 2 and len(final["rng"]) == 2
    for key in w0:
        assert torch.equal(final["model"][key], w0[key]), key
    assert (out / "register_rank0.txt").exists()
    assert not (out / "register_rank1.txt").exists()
    kinds = [a.kind for a in RunDir(run_dir).artifacts()]
    assert kinds.count("checkpoint") == 2 and kinds.count("config") == 1  # iter 2 + final, no duplicates
    assert Path(run_dir / "plots" / "loss_stage1.png").exists()
