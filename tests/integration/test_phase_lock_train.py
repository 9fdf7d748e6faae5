"""Issue 9 item 2 for the training commands: ``train`` / ``finetune-bags`` hold their phase's lock.

The lock itself is ``RunDir.phase_lock`` (tests/unit/test_safety_rundir.py); these tests check that the
training entry point (``lvisctl.engine.trainer.train``, shared by ``train``, ``finetune-bags`` and
``demo``) takes it. They skip until that one line is wired into the trainer (see the safety report).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lvisctl.errors import LvisctlError

REPO = Path(__file__).resolve().parents[2]


def _wired() -> bool:
    from lvisctl.training import launch as trainer

    return "phase_lock" in inspect.getsource(trainer.train)


pytestmark = pytest.mark.skipif(not _wired(), reason="engine/trainer.train does not take the phase lock yet")


def test_second_train_of_a_phase_stops_at_once_naming_the_holder(tmp_path):
    from lvisctl.config import load_config
    from lvisctl.training import train

    ready = tmp_path / "ready"
    code = textwrap.dedent(
        f"""
        import pathlib, time
        from lvisctl.rundir import RunDir
        with RunDir({str(tmp_path / "run")!r}).phase_lock("stage1"):
            pathlib.Path({str(ready)!r}).write_text("x")
            time.sleep(60)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        while not ready.exists():
            time.sleep(0.05)
        cfg = load_config(None, ["device=cpu"])  # never used: the lock is taken before anything else
        with pytest.raises(LvisctlError, match=rf"phase 'stage1' is being written by pid {holder.pid} on "):
            train(cfg, tmp_path / "run", stage=1)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".locks"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
