"""The whole pipeline through the CLI on tiny synthetic LVIS, as a user runs it.

demo (synth -> stage 1 -> stage 2 -> inference -> evaluation), then the commands the demo does not run:
pseudolabel (both modes), finetune-bags, tta-infer on the test-dev image info, submit, and a
runs show --verify that finds every recorded artifact intact.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def lvisctl(*args: object, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lvisctl", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_whole_pipeline_on_tiny_synthetic_lvis(tmp_path):
    run = tmp_path / "run"
    out = ok(lvisctl("demo", "--run-dir", run, "--preset", "tiny", "--iters", "12", "--stage2-iters", "6"))
    assert "stage 1 vs stage 2" in out and "AP thin" in out

    manifest = json.loads((run / "manifest.json").read_text())["artifacts"]
    kinds = {a["kind"] for a in manifest}
    assert {"dataset", "config", "checkpoint", "predictions", "metrics", "plot", "log"} <= kinds
    finals = {a["meta"]["phase"] for a in manifest if a["kind"] == "checkpoint" and a["meta"]["final"]}
    assert finals == {"stage1", "stage2"}
    metrics = json.loads((run / "metrics" / "demo_stage2.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300"):
        assert key in metrics["segm"] and key in metrics["bbox"]
    # stage 2 froze the backbone: its weights equal stage 1's bit for bit
    import torch

    s1 = torch.load(run / "checkpoints" / "stage1_final.pt", weights_only=True)["model"]
    s2 = torch.load(run / "checkpoints" / "stage2_final.pt", weights_only=True)["model"]
    frozen = [k for k in s1 if k.startswith(("backbone.", "rpn.")) and s1[k].is_floating_point()]
    assert frozen and all(torch.equal(s1[k], s2[k]) for k in frozen)

    # a 12-iteration model scores near EQL's prior (0.001): keep whatever it detects
    data = run / "data"
    ok(lvisctl("pseudolabel", "lvis", "--run-dir", run, "--score-thresh", "0.0001"))
    ok(
        lvisctl(
            "pseudolabel",
            "images",
            "--run-dir",
            run,
            "--images",
            data / "lvis_v1_image_info_unlabeled.json",
            "--score-thresh",
            "0.0001",
        )
    )
    labels = [
        a
        for a in json.loads((run / "manifest.json").read_text())["artifacts"]
        if a["kind"] == "pseudo-labels"
    ]
    assert sorted(a["meta"]["mode"] for a in labels) == ["missing", "unlabeled"]

    # self-training: a stage-1 phase that ignores proposals on the missing-annotation pseudo labels and
    # trains jointly on the pseudo-labelled unlabeled images
    ok(
        lvisctl(
            "train",
            "--stage",
            "1",
            "--phase",
            "stage1_st",
            "--config",
            "configs/demo/stage1.yaml",
            "--run-dir",
            run,
            "solver.max_iter=3",
            "data.pseudo_labels=latest",
            "data.extra_images=latest",
            "data.extra_per_epoch=4",
        )
    )
    artifacts = json.loads((run / "manifest.json").read_text())["artifacts"]
    st_final = next(a for a in artifacts if a["kind"] == "checkpoint" and a["meta"]["phase"] == "stage1_st")
    assert {i["kind"] for i in st_final["inputs"]} >= {"pseudo-labels"}
    assert {a["path"] for a in labels} <= {i["path"] for i in st_final["inputs"]}

    out = ok(
        lvisctl(
            "finetune-bags",
            "--run-dir",
            run,
            "--config",
            "configs/demo/finetune_bags.yaml",
            "solver.max_iter=4",
        )
    )
    assert "finetune-bags done after 4 iterations" in out

    test_info = data / "lvis_v1_image_info_test_dev.json"
    ok(
        lvisctl(
            "tta-infer",
            "--run-dir",
            run,
            "--images",
            test_info,
            "--checkpoint",
            run / "checkpoints" / "stage2_final.pt",
        )
    )
    submission = run / "submission.zip"  # inside the run dir: recorded (outside it would not be)
    ok(lvisctl("submit", "--run-dir", run, "--image-info", test_info, "--out", submission))
    with zipfile.ZipFile(submission) as zf:
        (name,) = zf.namelist()
        detections = json.loads(zf.read(name))
    assert detections and {"image_id", "category_id", "segmentation", "score"} <= set(detections[0])

    shown = ok(lvisctl("runs", "show", run, "--verify"))
    statuses = re.findall(r"│ (ok|missing|changed) +│\s*$", shown, flags=re.MULTILINE)
    assert "submission" in shown and statuses and set(statuses) == {"ok"}
