"""Process-group set-up without a GPU: the collective timeout, the GPU of a rank under launchers that show
each process one GPU (mocked device counts), the device of a resume without --config."""

from datetime import timedelta

import pytest
import torch

from lvisctl.config import load_config
from lvisctl.engine import distributed
from lvisctl.engine.distributed import pick_device, timeout_of


@pytest.fixture
def two_ranks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(kw))
    return calls


def test_process_group_gets_the_configured_timeout(two_ranks):
    cfg = load_config(None, ["runtime.dist_timeout_min=45"])
    info = distributed.init_distributed("cpu", timeout_of(cfg))
    assert two_ranks == [{"backend": "gloo", "timeout": timedelta(minutes=45)}]
    assert info.rank == 1 and info.world_size == 2


def test_default_timeout_is_longer_than_nccls_ten_minutes(two_ranks):
    assert timeout_of(load_config(None, [])) == 120.0
    assert timeout_of({"device": "cpu"}) == 120.0  # a config saved before the key existed
    distributed.init_distributed("cpu")
    assert two_ranks[0]["timeout"] == timedelta(minutes=120)


def test_bad_timeout_is_one_line():
    from lvisctl.errors import LvisctlError

    with pytest.raises(LvisctlError, match="runtime.dist_timeout_min must be > 0"):
        load_config(None, ["runtime.dist_timeout_min=0"])


@pytest.mark.parametrize(("local_rank", "visible", "index"), [(3, 1, 0), (5, 4, 1), (2, 8, 2)])
def test_gpu_is_local_rank_modulo_visible_devices(monkeypatch, local_rank, visible, index):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert pick_device("auto", local_rank) == torch.device("cuda", index)
    assert pick_device("cpu", local_rank) == torch.device("cpu")


class _Stop(Exception):
    pass


def test_resume_without_config_joins_with_the_saved_device(tmp_path, monkeypatch):
    """``train --resume`` alone: the process group's backend follows the checkpoint's device (cpu ->
    gloo), not ``device=auto`` (NCCL on a GPU node for a CPU model)."""
    from lvisctl.training import launch as trainer
    from tests.helpers.engine_standins import data_builder, model_builder, tiny_config

    kw = {"build_model": model_builder(), "build_data": data_builder()}
    cfg = tiny_config(**{"solver.max_iter": 4, "runtime.dist_timeout_min": 33})
    trainer.train(cfg, tmp_path, **kw)
    seen = []

    def record(preference, timeout_min=None):
        seen.append((preference, timeout_min))
        raise _Stop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # "auto" would pick the GPU
    monkeypatch.setattr(trainer, "init_distributed", record)
    with pytest.raises(_Stop):
        trainer.train(None, tmp_path, resume=True, **kw)
    assert seen == [("cpu", 33.0)]
