"""``lvisctl train --stage 1`` on tiny synthetic LVIS with the real model, through the command line."""

from pathlib import Path

import pytest
import torch
import yaml

from lvisctl.rundir import RunDir
from tests.helpers.cli import lvisctl
from tests.helpers.engine_standins import DEMO_CONFIG, register_train_json, tiny_items

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_data(tiny_synth):
    return tiny_synth  # the session's tiny synthetic LVIS (read only)


def test_train_stage1_writes_checkpoints_config_plot_and_tensorboard(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    register_train_json(run_dir, tiny_data["train"])
    items = tiny_items(**{"solver.max_iter": 6, "train.checkpoint_period": 2, "train.keep_checkpoints": 1})
    code, out = lvisctl("train", "--stage", "1", "--config", DEMO_CONFIG, "--run-dir", run_dir, *items)
    assert code == 0, out
    assert "stage 1 done after 6 iterations" in out
    run = RunDir(run_dir)

    ckpts = run.artifacts("checkpoint")
    # periodic at 2 and 4 (the last iteration saves only the final one); the newest periodic one is kept
    assert sorted((a.meta["iteration"], a.meta["final"]) for a in ckpts) == [(4, False), (6, True)]
    final = next(a for a in ckpts if a.meta["final"])
    assert final.meta["stage"] == 1 and isinstance(final.meta["epoch"], int)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "stage1_final.pt",
        "stage1_iter0000004.pt",
    ]
    assert final.inputs[0]["kind"] == "dataset"

    state = torch.load(run.resolve(final), map_location="cpu", weights_only=True)
    assert state["iteration"] == 6 and state["final"] is True and state["stage"] == 1
    assert state["category_stats"]["cat_ids"] and len(state["category_stats"]["frequency"]) == 8
    assert {"model", "optimizer", "scheduler", "rng", "history", "config"} <= set(state)
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)
    assert (
        state["config"]["solver"]["max_iter"] == 6
        and state["config"]["model"]["roi_heads"]["cls_loss"] == "eql"
    )
    assert state["scheduler"]["max_iter"] == 6 and state["scheduler"]["lr"] == pytest.approx(0.08 * 2 / 16)

    config = run.latest("config", stage=1)
    assert yaml.safe_load(run.resolve(config).read_text()) == state["config"]
    plot = run.latest("plot", stage=1)
    assert run.resolve(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [h["iteration"] for h in state["history"]] == [1, 2, 3, 4, 5, 6]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # a second plain run refuses to clobber, --resume of a finished run is a no-op
    code, out = lvisctl("train", "--stage", "1", "--config", DEMO_CONFIG, "--run-dir", run_dir, *items)
    assert code == 2 and "pass --resume" in out and len(out.strip().splitlines()) == 1
    code, out = lvisctl("train", "--stage", "1", "--run-dir", run_dir, "--resume")
    assert code == 0 and "already finished" in out


def test_bad_override_and_missing_data_are_one_line_errors(tmp_path):
    code, out = lvisctl("train", "--run-dir", tmp_path / "r1", "solver.bse_lr=0.1")
    assert code == 2 and "unknown config key solver.bse_lr (did you mean solver.base_lr?)" in out
    code, out = lvisctl("train", "--run-dir", tmp_path / "r2", "device=cpu")  # the base resnet50, no weights
    assert code == 2 and "model.backbone.weights: empty" in out and len(out.strip().splitlines()) == 1
    code, out = lvisctl("train", "--run-dir", tmp_path / "r2", "device=cpu", "model.backbone.weights=none")
    assert code == 2 and "no training data" in out and len(out.strip().splitlines()) == 1
    code, out = lvisctl("train", "--run-dir", tmp_path / "r3", "--resume")
    assert code == 2 and "no stage 1 checkpoint is recorded" in out


def test_exploding_loss_stops_with_one_line_and_no_nan_checkpoint(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    register_train_json(run_dir, tiny_data["train"])
    items = tiny_items(
        **{
            "solver.max_iter": 30,
            "solver.base_lr": 1.0e12,
            "solver.warmup_iters": 0,
            "train.checkpoint_period": 1,
        }
    )
    code, out = lvisctl("train", "--config", DEMO_CONFIG, "--run-dir", run_dir, *items)
    assert code == 2, out
    line = out.strip().splitlines()[-1]
    assert "stopped at iteration" in line and " is " in line and "the step was not applied" in line
    for art in RunDir(run_dir).artifacts("checkpoint"):
        state = torch.load(run_dir / art.path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_stage2_starts_from_stage1_and_keeps_frozen_modules_bit_identical(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    register_train_json(run_dir, tiny_data["train"])
    common = ["--config", DEMO_CONFIG, "--run-dir", run_dir]
    code, out = lvisctl("train", "--stage", "1", *common, *tiny_items(**{"solver.max_iter": 2}))
    assert code == 0, out
    items = tiny_items(**{"solver.max_iter": 3, "train.freeze": "[backbone,rpn]"})
    code, out = lvisctl("train", "--stage", "2", *common, *items)
    assert code == 0, out
    run = RunDir(run_dir)
    s1 = torch.load(run.resolve(run.latest("checkpoint", stage=1, final=True)), weights_only=True)
    s2_art = run.latest("checkpoint", stage=2, final=True)
    assert s2_art.inputs[-1]["path"] == "checkpoints/stage1_final.pt"  # lineage: made from stage 1
    s2 = torch.load(run.resolve(s2_art), weights_only=True)
    frozen = [k for k in s1["model"] if k.startswith(("backbone.", "rpn."))]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics are frozen too (eval mode)
    for key in frozen:
        assert torch.equal(s1["model"][key], s2["model"][key]), key
    heads = [k for k in s1["model"] if k.startswith("roi_heads.") and s1["model"][k].is_floating_point()]
    assert any(not torch.equal(s1["model"][k], s2["model"][k]) for k in heads)
    # frozen parameters are not in the optimizer at all
    n_trainable = sum(1 for k in heads if "running_" not in k and "num_batches" not in k)
    assert len(s2["optimizer"]["param_groups"][0]["params"]) == n_trainable


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("r50_baseline", ("resnet50", "softmax", "uniform", 0.0, False, False, 1e-4, 24, [16, 22])),
        ("r50_da", ("resnet50", "softmax", "uniform", 0.5, False, False, 1e-4, 24, [16, 22])),
        ("r50_da_eql", ("resnet50", "eql", "uniform", 0.5, False, False, 1e-4, 24, [16, 22])),
        ("r50_da_eql_rfs", ("resnet50", "eql", "rfs", 0.5, False, False, 1e-4, 24, [16, 22])),
        ("s101_da_eql_rfs", ("resnest101", "eql", "rfs", 0.5, False, False, 1e-4, 15, [11, 14])),
        ("s101_da_eql_rfs_tricks", ("resnest101", "eql", "rfs", 0.5, True, True, 5e-5, 15, [11, 14])),
    ],
)
def test_table1_configs_encode_their_rows(name, expected):
    from lvisctl.config import CONFIG_ROOT, load_config

    c = load_config(CONFIG_ROOT / "stage1" / f"{name}.yaml")
    got = (
        c.model.backbone.name,
        c.model.roi_heads.cls_loss,
        c.sampler.type,
        c.augment.mosaic.prob,
        c.augment.mosaic.rfs_weighted,
        c.augment.box_from_mask,
        c.solver.weight_decay,
        c.solver.epochs,
        c.solver.steps,
    )
    assert got == expected
    assert c.solver.base_lr == 0.02 and c.solver.momentum == 0.9
    assert c.augment.multi_scale == name.startswith("s101")
