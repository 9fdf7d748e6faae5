"""Device policies that only matter on a GPU, checked without one: cudnn.benchmark per phase, the
determinism switch (error, not warning; cuBLAS workspace), a nondeterministic op as one line."""

import os

import pytest
import torch

from lvisctl.config import load_config
from lvisctl.engine.distributed import set_cudnn_benchmark, set_deterministic
from lvisctl.errors import LvisctlError

CUDA = torch.device("cuda", 0)


@pytest.fixture
def restore_torch_flags(monkeypatch):
    bench = torch.backends.cudnn.benchmark
    det, warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.backends.cudnn.benchmark = bench
    torch.use_deterministic_algorithms(det, warn_only=warn)


@pytest.mark.parametrize(
    ("policy", "deterministic", "training", "expected"),
    [
        ("auto", False, True, False),  # multi-scale training: a new shape nearly every step
        ("auto", False, False, True),  # inference: a few padded sizes repeat
        ("always", False, True, True),
        ("always", True, True, False),  # the determinism switch wins in training
        ("never", False, False, False),
    ],
)
def test_cudnn_benchmark_policy(restore_torch_flags, policy, deterministic, training, expected):
    cfg = load_config(None, [f"runtime.cudnn_benchmark={policy}", f"train.deterministic={deterministic}"])
    assert set_cudnn_benchmark(cfg, CUDA, training=training) is expected
    assert torch.backends.cudnn.benchmark is expected
    assert set_cudnn_benchmark(cfg, torch.device("cpu"), training=training) is False


def test_deterministic_on_cuda_errors_and_fixes_the_cublas_workspace(restore_torch_flags):
    set_deterministic(True, CUDA)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # fail, not warn
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


class _PutModel(torch.nn.Module):
    """A stand-in whose forward uses an op with no deterministic implementation (``put_``)."""

    def __init__(self, num_classes):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, targets=None):
        buf = torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
        return {"loss": self.w.sum() * buf.sum()}


def test_nondeterministic_op_under_the_switch_is_one_line(tmp_path, restore_torch_flags):
    from lvisctl.training import train
    from tests.helpers.engine_standins import data_builder, tiny_config

    cfg = tiny_config(**{"train.deterministic": True, "solver.max_iter": 2})
    with pytest.raises(
        LvisctlError, match=r"^config: train.deterministic is true but put_ has no deterministic"
    ):
        train(
            cfg,
            tmp_path,
            build_model=lambda c, stats: _PutModel(stats.num_classes),
            build_data=data_builder(),
        )
    assert not list(tmp_path.rglob("*.pt"))  # nothing saved
