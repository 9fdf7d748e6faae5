"""benchmarks/gpu_check.sh --cpu: the prepared GPU check runs end to end at tiny sizes, so it cannot rot
before someone runs it on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_and_prints_the_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_WORKDIR": str(tmp_path / "work")}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu"], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| check | value | peak GPU memory (GiB) |" in out
    for row in ("AMP off: lvisctl", "AMP off: torchvision", "HM head cost", "inference img/s",
                "lvisctl postprocess", "20-iteration loss"):  # fmt: skip
        assert row in out, row
    table = out[out.index("| check | value | peak GPU memory (GiB) |") :]
    assert out.count("| check | value |") == 1  # one table, after every part ran
    for row in ("| train s/iter, HTC", "| train s/iter, EQL", "| train s/iter, BAGS",
                "| train s/iter, Mask Scoring", "| train s/iter, DCN", "| multi-scale train s/iter",
                "| train step with 12 GT masks/image",
                "| host syncs per train step (2 images) / per inference image, softmax",
                "| inference img/s, trained checkpoint", "| segm AP of the trained checkpoint, AMP on",
                "| segm AP of the trained checkpoint, AMP off"):  # fmt: skip
        assert row in table, row
    # the 2-process run was stopped by Ctrl-C mid-run, resumed and ran the paper TTA
    ddp = "| 2-process torchrun (gloo on the CPU): eval every 10 it, Ctrl-C, --resume, --tta paper |"
    assert f"{ddp} ok: stopped by Ctrl-C" in table
    assert (tmp_path / "work" / "ddp" / "checkpoints" / "stage1_final.pt").is_file()
    assert "scored segm:" in out and "AP bbox - segm" in out  # tta-infer + evaluate ran
    assert "== gpu check passed (cpu)" in out
    assert (tmp_path / "work" / "run" / "metrics").is_dir()


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_gpu_check_without_cuda_says_so(tmp_path):
    """On a machine without CUDA the GPU mode stops with one line before doing anything."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_WORKDIR": str(tmp_path / "w")}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "error: no CUDA device visible" in proc.stderr
