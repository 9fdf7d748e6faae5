"""HTC through the command line on tiny synthetic LVIS: stage 1 (2 iterations), stage 2 (GS + HM on all
three stages, backbone / neck / RPN frozen), then ``tta-infer`` and ``evaluate``."""

import json

import pytest
import torch

from lvisctl.rundir import RunDir
from tests.helpers.cli import lvisctl
from tests.helpers.engine_standins import REPO_CONFIGS, register_train_json, tiny_items

SMALL_DEFORM = {"model.roi_heads.deform_hidden_channels": 16}


@pytest.fixture
def tiny_data(tiny_synth):
    return tiny_synth  # the session's tiny synthetic LVIS (read only)


def test_htc_stage1_stage2_tta_infer_evaluate(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    register_train_json(run_dir, tiny_data["train"])
    stage1 = ["--config", REPO_CONFIGS / "demo" / "stage1_htc.yaml", "--run-dir", run_dir]
    code, out = lvisctl("train", "--stage", "1", *stage1, *tiny_items(**{"solver.max_iter": 2}))
    assert code == 0, out
    run = RunDir(run_dir)
    s1 = torch.load(run.resolve(run.latest("checkpoint", stage=1, final=True)), weights_only=True)
    assert s1["config"]["model"]["roi_heads"]["type"] == "htc"
    assert any(k.startswith("roi_heads.stages.2.mask.head.conv_res.") for k in s1["model"])
    assert not any(k.startswith("roi_heads.box.head.") for k in s1["model"])

    stage2 = ["--config", REPO_CONFIGS / "demo" / "stage2_htc.yaml", "--run-dir", run_dir]
    code, out = lvisctl(
        "train", "--stage", "2", *stage2, *tiny_items(**{"solver.max_iter": 2, **SMALL_DEFORM})
    )
    assert code == 0, out
    s2 = torch.load(run.resolve(run.latest("checkpoint", stage=2, final=True)), weights_only=True)
    frozen = [k for k in s1["model"] if k.startswith(("backbone.", "rpn."))]
    assert frozen and all(torch.equal(s1["model"][k], s2["model"][k]) for k in frozen)
    for i in range(3):  # GS on all three classifiers: K + 1 + groups logits (K = 8 tiny categories)
        assert s2["model"][f"roi_heads.stages.{i}.box.head.predictor.cls_score.weight"].shape[0] > 9
        assert f"roi_heads.stages.{i}.mask.head.boundary_predictor.weight" in s2["model"]  # HM on each

    code, out = lvisctl("tta-infer", "--run-dir", run_dir, "--images", tiny_data["val"], "--scales", "64")
    assert code == 0, out
    code, out = lvisctl("evaluate", "--run-dir", run_dir)
    assert code == 0, out
    metrics_art = run.latest("metrics")
    metrics = json.loads(run.resolve(metrics_art).read_text())
    assert 0.0 <= metrics["segm"]["AP"] <= 1.0 and 0.0 <= metrics["bbox"]["AP"] <= 1.0
    assert any("stage2_final" in i["path"] for i in metrics_art.inputs)
