"""Resume is bit-identical with the stateful long-tail losses (Seesaw's cum_samples, EQLv2's gradient
statistics, the federated loss's generator state): a run stopped after its iteration-2 checkpoint and
resumed ends with the weights and loss state of an uninterrupted run (real model, tiny synthetic LVIS)."""

import pytest
import torch

from lvisctl.data.synth import generate_synthetic_lvis
from lvisctl.training import default_hooks, train
from tests.helpers.engine_standins import FailAt, real_tiny_config, register_train_json


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_synthetic_lvis(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=0)


@pytest.mark.parametrize("loss", ["seesaw", "eqlv2", "federated"])
def test_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path, tiny_data, loss):
    items = {
        "solver.max_iter": 4,
        "train.checkpoint_period": 2,
        "model.backbone.weights": "none",
        "model.roi_heads.cls_loss": loss,
    }
    cfg = real_tiny_config(**items)
    for name in ("ref", "run"):
        register_train_json(tmp_path / name, tiny_data["train"])
    train(cfg, tmp_path / "ref")
    with pytest.raises(RuntimeError):
        train(cfg, tmp_path / "run", hooks=[*default_hooks(cfg), FailAt(3, RuntimeError("stop"))])
    train(None, tmp_path / "run", resume=True)
    a, b = (
        torch.load(tmp_path / name / "checkpoints" / "stage1_final.pt", weights_only=True)["model"]
        for name in ("ref", "run")
    )
    assert a.keys() == b.keys() and any(".cls_loss." in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
