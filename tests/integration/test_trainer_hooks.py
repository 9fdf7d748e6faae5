"""The Trainer's hooks and its resume guarantees, with the tiny stand-in detector (seconds, no LVIS model).

Hook order; evaluation hooks resumed at the same iterations; best-checkpoint selection; a resume on
changed training data; a damaged newest checkpoint; a run that fails before its first checkpoint; Ctrl-C;
``train.init_from`` of another architecture or category set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lvisctl.engine import checkpoint as ck
from lvisctl.engine.hooks import Hook
from lvisctl.engine.trainer import TrainData, TrainingInterrupted
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from lvisctl.training import default_hooks, train
from lvisctl.training.lvis_eval import LvisEvalHook as EvalHook
from lvisctl.training.lvis_eval import ValSet
from tests.helpers.engine_standins import (
    FailAt,
    TinyDataset,
    collate,
    data_builder,
    model_builder,
    tiny_config,
    tiny_stats,
)

KW = {"build_model": model_builder(), "build_data": data_builder()}


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def _rec(self, name, trainer):
        self.events.append((name, trainer.loop.iteration))

    def before_train(self, trainer):
        self._rec("before_train", trainer)

    def before_step(self, trainer):
        self._rec("before_step", trainer)

    def before_backward(self, trainer):
        self._rec("before_backward", trainer)

    def after_step(self, trainer):
        self._rec("after_step", trainer)

    def after_epoch(self, trainer):
        self._rec("after_epoch", trainer)

    def after_train(self, trainer):
        self._rec("after_train", trainer)


class FakeEval(EvalHook):
    """EvalHook whose 'AP' is a fixed sequence by evaluation count (no predictor, no LVIS files)."""

    def __init__(self, values, period, save_best="segm_AP") -> None:
        super().__init__(period, per_epoch=False, images=0, save_best=save_best)
        self.values, self.calls = list(values), []

    def before_train(self, trainer):
        val = trainer.run.root.parent / "val.json"  # outside the run dir: an external input
        val.write_text("[]")
        self.val = ValSet(val, val, [1, 2], {}, val)

    def _predict(self, trainer):
        torch.rand(3)  # evaluation may draw random numbers: the hook must restore the RNG
        return []

    def _score(self, records):
        ap = self.values[len(self.history)]
        return {"segm_AP": ap, "segm_APr": 0.0, "segm_APc": 0.0, "segm_APf": ap, "bbox_AP": ap}

    def evaluate(self, trainer):
        self.calls.append(trainer.loop.iteration)
        return super().evaluate(trainer)


def _hooks(cfg, *extra):
    hooks = default_hooks(cfg)
    return [*hooks[:-1], *extra, hooks[-1]]  # extra hooks before the checkpoint hook


def _final(run_dir):
    return torch.load(Path(run_dir) / "checkpoints/stage1_final.pt", weights_only=True)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_hook_order_and_epoch_events(tmp_path):
    # 12 images, batch 2 -> 6 iterations per epoch; 8 iterations = one full epoch and two steps
    cfg = tiny_config(**{"solver.max_iter": 8, "train.checkpoint_period": 100})
    rec = Recorder()
    train(cfg, tmp_path, hooks=[*default_hooks(cfg), rec], **KW)
    names = [e for e, _ in rec.events]
    assert names[0] == "before_train" and names[-1] == "after_train"
    steps = [e for e in rec.events if e[0] != "before_train" and e[0] != "after_train"]
    assert steps[:3] == [("before_step", 0), ("before_backward", 0), ("after_step", 1)]
    assert ("after_epoch", 6) in rec.events and names.count("after_epoch") == 1
    assert names.count("after_step") == 8 and names.count("before_backward") == 8


def test_best_checkpoint_follows_the_metric_sequence(tmp_path):
    cfg = tiny_config(**{"solver.max_iter": 10, "train.checkpoint_period": 5})
    fake = FakeEval([0.10, 0.30, 0.20, 0.25], period=3)  # evals at 3, 6, 9, 10
    train(cfg, tmp_path, hooks=_hooks(cfg, fake), **KW)
    assert fake.calls == [3, 6, 9, 10]
    run = RunDir(tmp_path)
    best = ck.resolve_checkpoint(run, "best")
    assert best.path == "checkpoints/stage1_best.pt" and best.meta["best"] is True
    assert best.meta["iteration"] == 6 and best.meta["value"] == pytest.approx(0.30)
    assert torch.load(run.resolve(best), weights_only=True)["iteration"] == 6
    # the best file is not part of the resume / pruning sequence, and "final" is still the final one
    assert all(not a.meta.get("best") for a in ck.stage_checkpoints(run, 1))
    assert ck.resolve_checkpoint(run, "final").path == "checkpoints/stage1_final.pt"
    assert ck.resolve_checkpoint(run, "stage1").path == "checkpoints/stage1_final.pt"
    assert ck.resolve_checkpoint(run, "stage1_best").path == best.path
    with pytest.raises(LvisctlError, match="this run has phases: stage1"):
        ck.resolve_checkpoint(run, "stage9")
    # the evaluations are in the manifest and metrics.jsonl
    evals = run.latest("metrics", what="train_eval")
    data = json.loads(run.resolve(evals).read_text())
    assert [h["iteration"] for h in data["history"]] == [3, 6, 9, 10] and data["best"]["iteration"] == 6
    lines = [json.loads(x) for x in (tmp_path / "logs/metrics_stage1.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "val/segm_AP" in x] == [3, 6, 9, 10]


def test_evaluation_changes_nothing_and_resume_evaluates_at_the_same_iterations(tmp_path):
    cfg = tiny_config(**{"solver.max_iter": 10, "train.checkpoint_period": 4})
    train(cfg, tmp_path / "plain", **KW)  # no evaluation at all
    ref_eval = FakeEval([0.1, 0.5, 0.2, 0.3], period=3)
    train(cfg, tmp_path / "ref", hooks=_hooks(cfg, ref_eval), **KW)
    _same(_final(tmp_path / "plain")["model"], _final(tmp_path / "ref")["model"])

    first = FakeEval([0.1, 0.5, 0.2, 0.3], period=3)
    with pytest.raises(RuntimeError, match="boom"):  # dies at 7: after the eval at 6, before a checkpoint
        train(cfg, tmp_path / "killed", hooks=_hooks(cfg, first) + [FailAt(7, RuntimeError("boom"))], **KW)
    assert first.calls == [3, 6]
    resumed = FakeEval([0.1, 0.5, 0.2, 0.3], period=3)
    train(cfg, tmp_path / "killed", resume=True, hooks=_hooks(cfg, resumed), **KW)
    assert resumed.calls == [6, 9, 10]  # the checkpoint at 4 held the eval at 3; 6 is replayed
    ref, got = _final(tmp_path / "ref"), _final(tmp_path / "killed")
    _same(ref["model"], got["model"])
    assert ref["hooks"]["FakeEval"] == got["hooks"]["FakeEval"]
    assert [h["iteration"] for h in got["hooks"]["FakeEval"]["history"]] == [3, 6, 9, 10]
    assert got["hooks"]["FakeEval"]["best"]["iteration"] == 6
    # metrics.jsonl: the replayed stretch after the checkpoint at 4 is not recorded twice
    lines = [json.loads(x) for x in (tmp_path / "killed/logs/metrics_stage1.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "val/segm_AP" in x] == [3, 6, 9, 10]
    assert [x["iteration"] for x in lines if "stage1/loss" in x] == [2, 4, 6, 8, 10]


def _file_data_builder(path: Path):
    from lvisctl.data.samplers import PlainSampler

    def build(cfg, run, info):
        sampler = PlainSampler(12, seed=int(cfg.seed), rank=info.rank, world_size=info.world_size)
        return TrainData(TinyDataset(12), sampler, collate, tiny_stats(), inputs=[path])

    return build


def test_resume_refuses_changed_training_data_unless_allowed(tmp_path):
    data = tmp_path / "train.json"
    data.write_text('{"v": 1}')
    kw = {"build_model": model_builder(), "build_data": _file_data_builder(data)}
    cfg = tiny_config(**{"solver.max_iter": 8, "train.checkpoint_period": 4})
    with pytest.raises(RuntimeError):
        train(cfg, tmp_path / "run", hooks=[*default_hooks(cfg), FailAt(5, RuntimeError("x"))], **kw)
    old = RunDir(tmp_path / "run").latest("checkpoint").inputs[0]["sha256"]
    data.write_text('{"v": 2}')
    with pytest.raises(LvisctlError) as err:
        train(cfg, tmp_path / "run", resume=True, **kw)
    msg = str(err.value)
    assert "\n" not in msg and str(data) in msg and old in msg and "--allow-changed-inputs" in msg
    result = train(cfg, tmp_path / "run", resume=True, allow_changed_inputs=True, **kw)
    assert result.iteration == 8


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, capsys):
    cfg = tiny_config(**{"solver.max_iter": 10, "train.checkpoint_period": 2, "train.keep_checkpoints": 3})
    train(cfg, tmp_path / "ref", **KW)
    with pytest.raises(RuntimeError):
        train(cfg, tmp_path / "run", hooks=[*default_hooks(cfg), FailAt(5, RuntimeError("x"))], **KW)
    newest = tmp_path / "run/checkpoints/stage1_iter0000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated (e.g. a disk that filled up)
    capsys.readouterr()
    train(cfg, tmp_path / "run", resume=True, **KW)
    out = capsys.readouterr().out
    assert (
        "stage1_iter0000004.pt" in out and "resuming from the older checkpoints/stage1_iter0000002.pt" in out
    )
    _same(_final(tmp_path / "ref")["model"], _final(tmp_path / "run")["model"])


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(**{"solver.max_iter": 10, "train.checkpoint_period": 4})
    fake = FakeEval([0.1, 0.2], period=2, save_best="")  # evaluates (and registers its metrics) at 2
    with pytest.raises(RuntimeError):
        train(cfg, run_dir, hooks=[*_hooks(cfg, fake), FailAt(3, RuntimeError("x"))], **KW)
    assert fake.calls == [2] and RunDir(run_dir).artifacts() == []
    assert not (run_dir / "metrics/train_eval_stage1.json").exists()
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "config_stage1.yaml").exists()
    assert not (run_dir / "logs/metrics_stage1.jsonl").exists()
    train(cfg, run_dir, **KW)  # and a plain new run is not refused


def test_ctrl_c_reports_where_to_resume(tmp_path):
    cfg = tiny_config(**{"solver.max_iter": 10, "train.checkpoint_period": 4})
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, tmp_path / "a", hooks=[*default_hooks(cfg), FailAt(6, KeyboardInterrupt())], **KW)
    assert stop.value.iteration == 6 and stop.value.checkpoint == "checkpoints/stage1_iter0000004.pt"
    with pytest.raises(TrainingInterrupted) as stop:
        train(cfg, tmp_path / "b", hooks=[*default_hooks(cfg), FailAt(2, KeyboardInterrupt())], **KW)
    assert stop.value.checkpoint is None and RunDir(tmp_path / "b").artifacts() == []


def test_overwrite_starts_the_phase_again(tmp_path):
    cfg = tiny_config(**{"solver.max_iter": 4})
    train(cfg, tmp_path, **KW)
    with pytest.raises(LvisctlError, match="--overwrite"):
        train(cfg, tmp_path, **KW)
    with pytest.raises(LvisctlError, match="train.freeze"):  # refused before anything is removed
        train(tiny_config(**{"train.freeze": "[nope]"}), tmp_path, overwrite=True, **KW)
    assert (tmp_path / "checkpoints/stage1_final.pt").exists()
    result = train(tiny_config(**{"solver.max_iter": 6}), tmp_path, overwrite=True, **KW)
    assert result.iteration == 6
    assert sorted(a.meta["iteration"] for a in RunDir(tmp_path).artifacts("checkpoint")) == [4, 6]


class Wider(torch.nn.Module):
    """Another trunk: only the rpn conv, the classifier and a BN counter match TinyDetector (5 of 13)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        nn = torch.nn
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1)
        )
        self.rpn = nn.Conv2d(8, 1, 1)
        self.roi_heads = nn.Sequential(nn.Dropout(0.3), nn.Linear(8, num_classes + 1))

    def forward(self, images, targets=None):
        feats = [self.backbone(img[None]) for img in images]
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in feats])
        labels = torch.stack([t["labels"][0] for t in targets])
        return {"loss_classifier": torch.nn.functional.cross_entropy(self.roi_heads(pooled), labels)}


def test_init_from_partial_match_is_refused_unless_allowed(tmp_path, capsys):
    cfg = tiny_config(**{"solver.max_iter": 2})
    src = train(cfg, tmp_path / "src", **KW).checkpoint
    wider = {"build_model": lambda c, s: Wider(s.num_classes), "build_data": data_builder()}
    init = tiny_config(**{"solver.max_iter": 2, "train.init_from": str(src)})
    with pytest.raises(LvisctlError, match=r"only 5 of 13 model tensors match .*init_allow_partial=true"):
        train(init, tmp_path / "a", **wider)
    allowed = tiny_config(
        **{"solver.max_iter": 2, "train.init_from": str(src), "train.init_allow_partial": True}
    )
    capsys.readouterr()
    train(allowed, tmp_path / "b", **wider)
    out = capsys.readouterr().out
    assert f"loaded 5 of 13 tensors from {src}" in out
    assert "initialised fresh: backbone.0, backbone.1, backbone.3" in out


def test_init_from_another_category_set_is_refused_unless_allowed(tmp_path):
    from lvisctl.data.samplers import PlainSampler

    src = train(tiny_config(**{"solver.max_iter": 2}), tmp_path / "src", **KW).checkpoint

    def five_classes(cfg, run, info):
        sampler = PlainSampler(12, seed=int(cfg.seed), rank=info.rank, world_size=info.world_size)
        return TrainData(TinyDataset(12), sampler, collate, tiny_stats(5))

    kw = {"build_model": model_builder(), "build_data": five_classes}
    init = {"solver.max_iter": 2, "train.init_from": str(src)}
    with pytest.raises(LvisctlError, match="another category set"):
        train(tiny_config(**init), tmp_path / "a", **kw)
    train(tiny_config(**init, **{"train.init_allow_partial": True}), tmp_path / "b", **kw)
