"""The real model on tiny synthetic LVIS: a from-scratch trunk, evaluation during training (TensorBoard,
metrics.jsonl, best checkpoint) and the stage-1 -> stage-2 hand-off of the frozen parts."""

from __future__ import annotations

import json

import pytest
import torch

from lvisctl.config import CONFIG_ROOT, load_config
from lvisctl.data.synth import generate_synthetic_lvis
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from lvisctl.training import train
from tests.helpers.engine_standins import real_tiny_config, register_train_json, tiny_items

FROZEN_BAGS = ("backbone.", "rpn.", "roi_heads.mask.head.")


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A 2-iteration stage 1 trained as `train --stage 1` with the base trunk settings (frozen_bn,
    freeze_at 2, no ImageNet weights), evaluated at iteration 1 and 2 on 3 val images."""
    root = tmp_path_factory.mktemp("handoff")
    data = generate_synthetic_lvis(root / "data", preset="tiny", seed=0)
    run_dir = root / "run"
    register_train_json(run_dir, data["train"])
    cfg = real_tiny_config(
        **{
            "solver.max_iter": 2,
            "train.checkpoint_period": 2,
            "model.backbone.norm": "frozen_bn",
            "model.backbone.freeze_at": 2,
            "data.val": str(data["val"]),
            "train.eval_period": 1,
            "train.eval_images": 3,
            "train.save_best": "segm_AP",
            "log.image_period": 2,
            "log.num_images": 2,
            "inference.scales": [64],
            "inference.max_size": 96,
            "inference.score_thresh": 0.0,
        }
    )
    result = train(cfg, run_dir)
    return {"run_dir": run_dir, "result": result, "data": data}


def _state(run_dir, rel):
    return torch.load(run_dir / rel, weights_only=True)


def test_random_init_trunk_trains_its_batchnorm(stage1):
    from torchvision.ops import FrozenBatchNorm2d

    model = stage1["result"].model
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.backbone.body.parameters())
    saved = _state(stage1["run_dir"], "checkpoints/stage1_final.pt")["config"]["model"]["backbone"]
    assert saved["norm"] == "bn" and saved["freeze_at"] == 0


def test_eval_metrics_reach_tensorboard_jsonl_and_manifest(stage1):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = stage1["run_dir"]
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "val/segm_AP",
        "val/segm_AP50",
        "val/bbox_AP",
        "train/loss",  # the same tag in every phase (TensorBoard overlays them)
        "train/lr",
        "train/max_mem_mb",
    ):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("val/segm_AP")] == [1, 2]
    assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("val/segm_AP"))
    assert len([t for t in tags["images"] if t.startswith("val_images/")]) == 2

    lines = [json.loads(x) for x in (run_dir / "logs/metrics_stage1.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "stage1/loss" in x] == [1, 2]
    assert [x["iteration"] for x in lines if "val/segm_AP" in x] == [1, 2]
    step = next(x for x in lines if "stage1/loss" in x)
    assert step["stage1/data_time"] >= 0 and step["stage1/iters_per_s"] > 0 and step["stage1/grad_norm"] > 0

    run = RunDir(run_dir)
    evals = json.loads(run.resolve(run.latest("metrics", what="train_eval")).read_text())
    assert evals["images"] == 3 and [h["iteration"] for h in evals["history"]] == [1, 2]
    best = [a for a in run.artifacts("checkpoint") if a.meta.get("best")]
    assert [a.path for a in best] == ["checkpoints/stage1_best.pt"]
    assert best[0].meta["value"] == max(h["metrics"]["segm_AP"] for h in evals["history"])


def test_stage2_config_contradicting_a_frozen_part_stops_with_the_key(stage1, tmp_path):
    cfg = real_tiny_config(
        **{"solver.max_iter": 1, "model.fpn.out_channels": 32, "train.freeze": "[backbone,rpn]"}
    )
    with pytest.raises(LvisctlError) as err:
        train(cfg, stage1["run_dir"], stage=2, phase="wrong_fpn")
    msg = str(err.value)
    assert "\n" not in msg and "model.fpn.out_channels=32 contradicts the checkpoint (16)" in msg
    assert not RunDir(stage1["run_dir"]).find("checkpoint", phase="wrong_fpn")


def test_finetune_bags_default_config_on_a_small_stage1_loads_every_frozen_tensor(stage1, capsys):
    """The default finetune_bags.yaml says resnet50 / fpn 256 / mask convs 256; stage 1 is the tiny net."""
    items = [
        i
        for i in tiny_items(**{"solver.max_iter": 1, "train.init_from": "best"})
        if not i.startswith(("model.", "augment.mosaic"))  # the stage-2 config states no architecture
    ]
    cfg = load_config(CONFIG_ROOT / "stage2" / "finetune_bags.yaml", items)
    assert cfg.model.backbone.name == "resnet50" and cfg.model.fpn.out_channels == 256
    capsys.readouterr()
    result = train(cfg, stage1["run_dir"], stage=2, phase="finetune_bags")
    out = capsys.readouterr().out
    assert "model.backbone.name='tiny'" in out and "model.fpn.out_channels=16" in out
    assert "initialised fresh: roi_heads.box.head" in out
    run = RunDir(stage1["run_dir"])
    final = run.latest("checkpoint", phase="finetune_bags", final=True)
    assert final.inputs[-1]["path"] == "checkpoints/stage1_best.pt"
    s1, s2 = (
        _state(stage1["run_dir"], "checkpoints/stage1_best.pt"),
        torch.load(result.checkpoint, weights_only=True),
    )
    frozen = [k for k in s1["model"] if k.startswith(FROZEN_BAGS)]
    assert len(frozen) > 50 and all(k in s2["model"] for k in frozen)
    for key in frozen:
        assert torch.equal(s1["model"][key], s2["model"][key]), key
    assert s2["config"]["model"]["backbone"]["name"] == "tiny"


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _cli(*args, **popen):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "lvisctl", *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_train_reads_images_from_data_root_and_image_root(tmp_path):
    """detectron2's layout: datasets/lvis/*.json, datasets/coco/{train,val}2017/ (the README command)."""
    import shutil

    data = generate_synthetic_lvis(tmp_path / "synth", preset="tiny", seed=0)
    datasets = tmp_path / "datasets"
    (datasets / "lvis").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(data[split], datasets / "lvis" / data[split].name)
        shutil.move(str(data["root"] / f"{split}2017"), datasets / "coco" / f"{split}2017")
    items = tiny_items(
        **{
            "solver.max_iter": 1,
            "data.root": datasets,
            "data.train": "lvis/lvis_v1_train.json",
            "data.val": "lvis/lvis_v1_val.json",
            "data.image_root": "coco",
            "train.eval_period": 1,
            "train.eval_images": 2,
            "inference.scales": [64],
        }
    )
    config = CONFIG_ROOT / "demo" / "stage1.yaml"
    proc = _cli("train", "--config", config, "--run-dir", tmp_path / "run", *items)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert "eval at iteration 1 on 2 images" in out


def test_ctrl_c_exits_130_and_resume_refuses_changed_data(tmp_path):
    import shutil
    import signal
    import time

    data = generate_synthetic_lvis(tmp_path / "data", preset="tiny", seed=0)
    train_json = tmp_path / "data" / "my_train.json"
    shutil.copy(data["train"], train_json)
    run_dir = tmp_path / "run"
    items = tiny_items(**{"solver.max_iter": 500, "train.checkpoint_period": 1, "data.train": train_json})
    proc = _cli("train", "--config", CONFIG_ROOT / "demo" / "stage1.yaml", "--run-dir", run_dir, *items)
    deadline = time.time() + 300
    while not list(run_dir.glob("checkpoints/stage1_iter*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)  # generous: CI machines can be loaded
    assert proc.returncode == 130, out + err
    last = err.strip().splitlines()[-1]
    assert "interrupted at iteration" in last and "resume from checkpoints/stage1_iter" in last
    assert f"lvisctl train --run-dir {run_dir} --stage 1 --resume" in last

    train_json.write_text(train_json.read_text() + " ")  # same content for json, another file
    proc = _cli("train", "--run-dir", run_dir, "--resume")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(train_json) in lines[0] and "sha256" in lines[0]
    assert "--allow-changed-inputs" in lines[0]


def test_finetune_bags_phase_and_overwrite_through_the_cli(stage1):
    items = [
        i for i in tiny_items(**{"solver.max_iter": 1}) if not i.startswith(("model.", "augment.mosaic"))
    ]
    run_dir = stage1["run_dir"]
    args = ("finetune-bags", "--run-dir", run_dir, "--phase", "bags_b", *items)
    out, err = _cli(*args).communicate(timeout=600)
    assert "bags_b done after 1 iterations" in out, out + err
    assert RunDir(run_dir).find("checkpoint", phase="bags_b", final=True)
    proc = _cli(*args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "--overwrite" in err, out + err
    proc = _cli(*args, "--overwrite")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "bags_b done after 1 iterations" in out, out + err


def _ddp_eval_worker(rank: int, world_size: int, port: int, run_dir: str, val: str) -> None:
    from tests.helpers.engine_standins import join_gloo

    join_gloo(rank, world_size, port)
    cfg = real_tiny_config(**{"solver.max_iter": 2, "data.val": val, "train.eval_period": 2, **EVAL_ITEMS})
    train(cfg, run_dir)


EVAL_ITEMS = {"train.eval_images": 4, "inference.scales": [64], "inference.score_thresh": 0.0}


@pytest.mark.slow
def test_eval_under_two_gloo_processes_scores_all_images_once(tmp_path):
    """Each rank predicts its shard; rank 0 scores the gathered records: the same AP as one process."""
    import socket
    from types import SimpleNamespace

    import torch.multiprocessing as mp

    from lvisctl.engine.distributed import DistInfo
    from lvisctl.inference.factory import load_checkpoint_model
    from lvisctl.training.lvis_eval import LvisEvalHook as EvalHook
    from lvisctl.training.lvis_eval import load_val_set

    data = generate_synthetic_lvis(tmp_path / "data", preset="tiny", seed=0)
    run_dir = tmp_path / "run"
    register_train_json(run_dir, data["train"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_eval_worker, args=(2, port, str(run_dir), str(data["val"])), nprocs=2, join=True)
    run = RunDir(run_dir)
    evals = json.loads(run.resolve(run.latest("metrics", what="train_eval")).read_text())
    assert evals["images"] == 4 and [h["iteration"] for h in evals["history"]] == [2]

    # one process, the final weights, the same 4 images
    model, stats, cfg = load_checkpoint_model(run_dir / "checkpoints/stage1_final.pt")
    hook = EvalHook(2, per_epoch=False, images=4)
    hook.val = load_val_set(cfg, run, 4)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    fake = SimpleNamespace(
        model=model, info=info, cfg=cfg, amp=False, data=SimpleNamespace(category_stats=stats)
    )
    single = hook._score(hook._predict(fake))
    for key, value in single.items():
        assert evals["history"][0]["metrics"][key] == pytest.approx(value, abs=1e-9), key
