"""One rule for default inputs (issue 20, item 4): every command's default checkpoint or predictions, from
the manifest alone, printed before anything loads; equally plausible candidates are refused."""

from __future__ import annotations

import json

import pytest

from lvisctl.config import load_config
from lvisctl.engine.checkpoint import Phase, resolve_checkpoint
from lvisctl.engine.init_weights import init_source
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from lvisctl.rundir.defaults import default_model_checkpoint, default_start_checkpoint, stage1_lineage


def _ckpt(run: RunDir, phase: str, stage: int, inputs=(), *, final: bool = True):
    path = run.root / "checkpoints" / f"{phase}_{'final' if final else 'iter1'}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(phase.encode())  # distinct content: distinct sha256
    meta = {"stage": stage, "phase": phase, "iteration": 10, "epoch": 1, "final": final}
    return run.register("checkpoint", path, inputs=list(inputs), meta=meta)


def _file(run: RunDir, rel: str, kind: str, inputs=(), **meta):
    path = run.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([rel]))
    return run.register(kind, path, inputs=list(inputs), meta=meta)


@pytest.fixture
def self_trained(tmp_path):
    """stage1 -> pseudo labels -> stage1_st (self-training), then a stage-1 side experiment (newest)."""
    run = RunDir(tmp_path / "run")
    s1 = _ckpt(run, "stage1", 1)
    labels = _file(run, "pseudo/labels.json", "pseudo-labels", inputs=[s1], mode="unlabeled")
    st = _ckpt(run, "stage1_st", 1, inputs=[labels])
    side = _ckpt(run, "stage1_r101", 1)
    return run, s1, st, side


def test_stage2_starts_from_the_self_trained_stage1_not_a_side_experiment(self_trained, capsys):
    run, s1, st, side = self_trained
    assert [a.path for a in stage1_lineage(run)] == [s1.path, st.path]
    source = init_source(load_config(None), run, Phase(2))
    assert source.path == st.path == "checkpoints/stage1_st_final.pt"
    out = capsys.readouterr().out
    assert f"stage 2 starts from: {st.path} (phase stage1_st, made {st.created};" in out
    finetune = init_source(load_config(None), run, Phase(2, "finetune_bags"))
    assert finetune.path == st.path


def test_pseudolabel_takes_the_lineage_too(self_trained, capsys):
    from lvisctl.inference.checkpoints import resolve_checkpoint as resolve

    run, _, st, _ = self_trained
    found = resolve(run, None, stage=1)  # pseudolabel's default: the stage-1 lineage
    assert found.input.path == st.path and found.path == run.root / st.path
    assert f"default checkpoint: {st.path} (phase stage1_st" in capsys.readouterr().out


def test_competing_stage2_models_are_refused_with_the_choices(self_trained, capsys):
    run, *_ = self_trained
    _ckpt(run, "stage2", 2)
    _ckpt(run, "finetune_bags", 2)
    with pytest.raises(LvisctlError) as err:
        resolve_checkpoint(run, None)  # tta-infer's and analyze's default
    msg = str(err.value)
    assert "several stage-2 models could be meant: stage2 (checkpoints/stage2_final.pt, made" in msg
    assert msg.endswith("choose with --checkpoint stage2 or --checkpoint finetune_bags") and "\n" not in msg
    assert resolve_checkpoint(run, "finetune_bags").path == "checkpoints/finetune_bags_final.pt"


def test_a_single_stage2_model_is_taken_and_printed(self_trained, capsys):
    run, *_ = self_trained
    s2 = _ckpt(run, "stage2", 2)
    assert default_model_checkpoint(run).artifact.path == s2.path
    assert resolve_checkpoint(run, None).path == s2.path
    assert f"default checkpoint: {s2.path} (phase stage2, made" in capsys.readouterr().out


def test_stage1_phases_without_stage1_are_refused_when_several(tmp_path):
    run = RunDir(tmp_path / "run")
    _ckpt(run, "a", 1)
    assert default_start_checkpoint(run).artifact.path == "checkpoints/a_final.pt"
    _ckpt(run, "b", 1)
    with pytest.raises(LvisctlError, match=r"choose with train.init_from=a or train.init_from=b$"):
        default_start_checkpoint(run, choose="train.init_from=")


def test_submit_takes_the_predictions_made_on_its_image_info(tmp_path, capsys):
    from lvisctl.evaluation.submission import latest_segm_predictions

    run = RunDir(tmp_path / "run")
    test_info = tmp_path / "test_info.json"
    val = tmp_path / "val.json"
    for p in (test_info, val):
        p.write_text(json.dumps({"images": [], "categories": [], "name": p.name}))
    on_test = _file(run, "predictions/test.segm.json", "predictions", iou_type="segm", gt=str(test_info))
    _file(run, "predictions/val.segm.json", "predictions", iou_type="segm", gt=str(val))  # newer
    assert latest_segm_predictions(run, test_info).path == on_test.path
    assert f"predictions: {on_test.path} (made {on_test.created}; newest predictions made on" in (
        capsys.readouterr().out
    )
    other = tmp_path / "other.json"
    other.write_text("[]")
    with pytest.raises(LvisctlError, match=r"no predictions made on .*other.json recorded \(the run has"):
        latest_segm_predictions(run, other)


def test_visualize_takes_the_predictions_made_on_its_gt(tmp_path):
    from lvisctl.visualization.render import default_predictions_for

    run = RunDir(tmp_path / "run")
    val = tmp_path / "val.json"
    val.write_text("{}")
    on_val = _file(run, "predictions/val.segm.json", "predictions", iou_type="segm", gt=str(val))
    newest = _file(run, "predictions/test.segm.json", "predictions", iou_type="segm", gt="/x/test.json")
    assert default_predictions_for(run, val).path == on_val.path
    assert default_predictions_for(run, None).path == newest.path


def test_predictions_on_a_copy_of_the_json_are_found_by_content(tmp_path):
    from lvisctl.evaluation.submission import latest_segm_predictions

    run = RunDir(tmp_path / "run")
    info = tmp_path / "test_info.json"
    info.write_text(json.dumps({"images": [], "name": "test-dev"}))
    made = _file(run, "predictions/t.segm.json", "predictions", inputs=[info], iou_type="segm", gt=str(info))
    copy = tmp_path / "elsewhere" / "test_info.json"
    copy.parent.mkdir()
    copy.write_text(info.read_text())
    assert latest_segm_predictions(run, copy).path == made.path
