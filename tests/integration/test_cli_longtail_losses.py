"""``model.roi_heads.cls_loss: seesaw | eqlv2 | federated`` through the command line: stage 1 on Mask R-CNN
and on HTC (2 iterations each, tiny synthetic LVIS), predictions of both (the Mask R-CNN one with the paper's
TTA), and ``finetune-bags`` from the Mask R-CNN stage-1 checkpoint (the classifier changes shape)."""

import json

import pytest
import torch

from lvisctl.data.synth import generate_synthetic_lvis
from lvisctl.rundir import RunDir
from tests.helpers.cli import lvisctl
from tests.helpers.engine_standins import DEMO_CONFIG, register_train_json, tiny_items

# width of the classifier per loss on K classes: (stage-1 loss, finetune-bags) in checkpoints
LOGITS = {"seesaw": lambda k: k + 2, "eqlv2": lambda k: k + 1, "federated": lambda k: k}
STATE = {"seesaw": "cum_samples", "eqlv2": "pos_neg", "federated": "generator_state"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_synthetic_lvis(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=0)


def _final(run: RunDir, phase: str) -> dict:
    art = run.latest("checkpoint", phase=phase, final=True)
    assert art is not None, phase
    return torch.load(run.resolve(art), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("loss", ["seesaw", "eqlv2", "federated"])
def test_loss_trains_and_predicts_on_mask_rcnn_and_htc_then_finetune_bags(tmp_path, tiny_data, loss):
    run_dir = tmp_path / "run"
    register_train_json(run_dir, tiny_data["train"])
    run = RunDir(run_dir)
    items = tiny_items(
        **{"solver.max_iter": 2, "model.backbone.weights": "none", "model.roi_heads.cls_loss": loss}
    )
    common = ["--config", DEMO_CONFIG, "--run-dir", run_dir]
    val = ["--images", tiny_data["val"], "--scales", "64"]

    # Mask R-CNN stage 1, then predictions with the paper's TTA (the loss's scores() at test time)
    code, out = lvisctl("train", "--stage", "1", *common, *items)
    assert code == 0, out
    state = _final(run, "stage1")
    k = len(state["category_stats"]["cat_ids"])
    assert state["config"]["model"]["roi_heads"]["cls_loss"] == loss
    assert state["model"]["roi_heads.box.head.predictor.cls_score.weight"].shape[0] == LOGITS[loss](k)
    assert f"roi_heads.box.cls_loss.{STATE[loss]}" in state["model"]  # resumes continue from it
    code, out = lvisctl(
        "tta-infer", "--run-dir", run_dir, *val, "--tta", "paper", "--out", tmp_path / "mrcnn.json"
    )
    assert code == 0, out
    segm = json.loads((tmp_path / "mrcnn.segm.json").read_text())
    assert segm and all(0 < d["score"] <= 1 for d in segm)

    # finetune-bags from it: the classifier changes shape (K + 1 + groups), every other tensor loads
    stage2_items = [
        i for i in tiny_items(**{"solver.max_iter": 1}) if not i.startswith(("model.", "augment.mosaic"))
    ]
    code, out = lvisctl("finetune-bags", "--run-dir", run_dir, *stage2_items)
    assert code == 0, out
    assert "initialised fresh: roi_heads.box.head.predictor.cls_score" in out
    bags = _final(run, "finetune_bags")
    assert bags["config"]["model"]["roi_heads"]["cls_loss"] == "bags"
    assert bags["model"]["roi_heads.box.head.predictor.cls_score.weight"].shape[0] > k + 1

    # HTC stage 1 (the loss on every stage), then plain predictions
    code, out = lvisctl(
        "train", "--stage", "1", "--phase", "htc", *common, *items, "model.roi_heads.type=htc"
    )
    assert code == 0, out
    htc = _final(run, "htc")
    for stage in range(3):
        key = f"roi_heads.stages.{stage}.box.head.predictor.cls_score.weight"
        assert htc["model"][key].shape[0] == LOGITS[loss](k), key
        assert f"roi_heads.stages.{stage}.box.cls_loss.{STATE[loss]}" in htc["model"]
    ckpt = run.resolve(run.latest("checkpoint", phase="htc", final=True))
    code, out = lvisctl(
        "tta-infer", "--run-dir", run_dir, *val, "--checkpoint", ckpt, "--out", tmp_path / "htc.json"
    )
    assert code == 0, out
    assert json.loads((tmp_path / "htc.bbox.json").read_text())
