"""``train.hooks``: a hook registered on ``lvisctl.registry.HOOKS`` is one new file plus one config value."""

from __future__ import annotations

import pytest

from lvisctl.config import load_config
from lvisctl.engine.hooks import CheckpointHook, Hook
from lvisctl.errors import LvisctlError
from lvisctl.registry import HOOKS
from lvisctl.training import default_hooks


@HOOKS.register("test_counting", help="counts the steps it saw (a test's own hook)")
class CountingHook(Hook):
    def __init__(self, period: int = 1) -> None:
        self.period, self.seen = period, 0

    @classmethod
    def from_config(cls, cfg) -> CountingHook:
        return cls(period=int(cfg.solver.max_iter))

    def after_step(self, trainer) -> None:
        self.seen += 1


def test_a_registered_hook_joins_the_list_before_the_checkpoint_hook():
    cfg = load_config(None, ["train.hooks=[test_counting]", "solver.max_iter=7"])
    hooks = default_hooks(cfg)
    counting = [h for h in hooks if isinstance(h, CountingHook)]
    assert len(counting) == 1 and counting[0].period == 7  # built by its from_config
    assert isinstance(hooks[-1], CheckpointHook) and hooks[-2] is counting[0]
    assert not any(isinstance(h, CountingHook) for h in default_hooks(load_config(None, [])))


def test_an_unknown_hook_name_is_one_line_with_a_suggestion():
    cfg = load_config(None, ["train.hooks=[test_countin]"])
    with pytest.raises(LvisctlError, match=r"^config: train.hooks: unknown value .test_countin. .*did you"):
        default_hooks(cfg)
