"""The generic engine: the metrics store, the after_backward event, EvalHook with an injected evaluate_fn
and the separate BestCheckpointHook (old checkpoints' best read), hooks on the HOOKS registry."""

from __future__ import annotations

import torch

from lvisctl.engine import checkpoint as ck
from lvisctl.engine.eval_hook import BestCheckpointHook, EvalHook
from lvisctl.engine.hooks import Hook, load_hook_states
from lvisctl.engine.metrics import MetricsStore
from lvisctl.registry import HOOKS
from lvisctl.rundir import RunDir
from lvisctl.training import default_hooks, train
from tests.helpers.engine_standins import data_builder, model_builder, tiny_config

KW = {"build_model": model_builder(), "build_data": data_builder()}


def test_metrics_store_latest_iteration_and_history():
    store = MetricsStore()
    assert store.latest("lr") is None and store.latest("lr", 1.0) == 1.0 and store.iteration_of("lr") is None
    store.put("lr", 0.1)
    store.iteration = 3
    store.put("lr", 0.2)
    store.put("val", {"AP": 0.5}, keep=True)
    store.put("val", {"AP": 0.4}, iteration=1, keep=True)
    assert store.latest("lr") == 0.2 and store.iteration_of("lr") == 3 and "lr" in store
    assert store.history("val") == [(3, {"AP": 0.5}), (1, {"AP": 0.4})] and store.history("lr") == []


class GradSpy(Hook):
    """Records the events and whether gradients exist at after_backward (before the optimizer step)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.weights_moved_before_step: list[bool] = []

    def before_backward(self, trainer):
        self.events.append("before_backward")
        self._w = trainer.model.roi_heads[1].weight.detach().clone()

    def after_backward(self, trainer):
        self.events.append("after_backward")
        assert trainer.model.roi_heads[1].weight.grad is not None
        self.weights_moved_before_step.append(not torch.equal(self._w, trainer.model.roi_heads[1].weight))
        assert set(trainer.metrics.latest("losses")) == {"loss_classifier", "loss_objectness"}

    def after_step(self, trainer):
        self.events.append("after_step")
        assert trainer.metrics.latest("lr") > 0 and "loss" in trainer.metrics.latest("step_losses")


def test_after_backward_runs_between_backward_and_the_step(tmp_path):
    cfg = tiny_config(**{"solver.max_iter": 3, "train.checkpoint_period": 100})
    spy = GradSpy()
    train(cfg, tmp_path, hooks=[*default_hooks(cfg), spy], **KW)
    assert spy.events == ["before_backward", "after_backward", "after_step"] * 3
    assert spy.weights_moved_before_step == [False] * 3


def _hooks(cfg, *extra):
    hooks = default_hooks(cfg)
    return [*hooks[:-1], *extra, hooks[-1]]


def test_eval_hook_takes_any_evaluate_fn_and_best_hook_saves_the_best(tmp_path):
    values = iter([0.3, 0.1, 0.2])
    modes: list[bool] = []

    def evaluate(model):  # no LVIS anywhere: any callable of the model
        modes.append(model.training)
        torch.rand(2)  # evaluation may draw random numbers: the hook restores the RNG
        return {"loss_val": next(values)}

    cfg = tiny_config(**{"solver.max_iter": 6, "train.checkpoint_period": 3})
    ev, best = EvalHook(2, evaluate), BestCheckpointHook("loss_val", mode="min")
    train(cfg, tmp_path / "a", hooks=_hooks(cfg, ev, best), **KW)
    assert [h["iteration"] for h in ev.history] == [2, 4, 6] and best.best == {
        "metric": "loss_val",
        "value": 0.1,
        "iteration": 4,
    }
    assert modes == [False] * 3  # evaluated in eval mode
    run = RunDir(tmp_path / "a")
    art = ck.resolve_checkpoint(run, "best")
    assert art.meta["iteration"] == 4
    final = torch.load(tmp_path / "a/checkpoints/stage1_final.pt", weights_only=True)
    assert final["hooks"]["EvalHook"]["history"][1] == {"iteration": 4, "metrics": {"loss_val": 0.1}}
    assert final["hooks"]["BestCheckpointHook"]["best"]["iteration"] == 4
    # the same run without evaluation trains identically
    train(cfg, tmp_path / "b", **KW)
    plain = torch.load(tmp_path / "b/checkpoints/stage1_final.pt", weights_only=True)
    for k, v in plain["model"].items():
        assert torch.equal(v, final["model"][k]), k


def test_best_hook_reads_the_best_of_a_checkpoint_from_before_the_split():
    old = {"EvalHook": {"history": [{"iteration": 2, "metrics": {"segm_AP": 0.4}}], "best": {"x": 1}}}
    ev, best = EvalHook(2, lambda m: {}), BestCheckpointHook("segm_AP")
    load_hook_states([ev, best], old)
    assert ev.history == old["EvalHook"]["history"] and best.best == {"x": 1}
    load_hook_states([best], {"BestCheckpointHook": {"best": {"y": 2}}, **old})
    assert best.best == {"y": 2}  # its own key wins


def test_hooks_are_registered():
    from lvisctl.training.image_log import ImageLogHook

    assert HOOKS.get("eval") is EvalHook and HOOKS.get("best_checkpoint") is BestCheckpointHook
    assert HOOKS.get("image_log") is ImageLogHook
    assert {"lr_schedule", "non_finite", "gradients", "logging", "checkpoint"} <= set(HOOKS.names())


def test_clipping_without_the_gradient_hook_is_refused(tmp_path):
    import pytest

    from lvisctl.engine.hooks import CheckpointHook
    from lvisctl.errors import LvisctlError

    cfg = tiny_config(**{"solver.max_iter": 2, "solver.clip_grad_norm": 1.0})
    with pytest.raises(LvisctlError, match="clip_grad_norm > 0 needs the GradientHook"):
        train(cfg, tmp_path, hooks=[CheckpointHook(1, 1)], **KW)
