"""``lvisctl analyze masks`` through the CLI, with real (tiny, untrained) checkpoints."""

import json

from typer.testing import CliRunner

from lvisctl.cli.app import app
from lvisctl.rundir import RunDir
from tests.helpers.tiny_run import add_checkpoint, make_lvis


def test_analyze_two_checkpoints_writes_registered_json_and_png(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    images = make_lvis(data)
    run = RunDir(tmp_path / "run")
    stage1 = add_checkpoint(run, stage=1, final=True, seed=1)
    stage2 = add_checkpoint(run, stage=2, final=True, seed=2)
    args = [
        "analyze",
        "masks",
        "--run-dir",
        run.root,
        "--images",
        images,
        "--scale",
        "48",
        "--checkpoint",
        stage1,
        "--checkpoint",
        stage2,
    ]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "Mask quality with oracle boxes" in result.output
    assert "delta" in result.output
    metrics = json.loads((run.root / "analysis/mask_quality.json").read_text())
    assert metrics["scored"]["gt"] == str(images)
    assert [c["label"] for c in metrics["checkpoints"]] == ["stage1_final", "stage2_final"]
    for entry in metrics["checkpoints"]:
        assert entry["instances"] == 3  # one square per image
        cell = entry["table"]["all"][">=0.5"]
        assert cell["count"] == 3 and 0.0 <= cell["mask_iou"] <= 1.0
        assert 0.0 <= entry["oracle_box_mask_ap"]["AP"] <= 1.0
    assert (run.root / "analysis/mask_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = {a.path: a.kind for a in run.artifacts()}
    assert kinds["analysis/mask_quality.json"] == "metrics"
    assert kinds["analysis/mask_quality.png"] == "plot"

    again = CliRunner().invoke(app, [str(a) for a in args])
    assert again.exit_code != 0  # an existing analysis is never replaced without --overwrite


def test_analyze_needs_annotations(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    images = make_lvis(data)
    info = json.loads(images.read_text())
    del info["annotations"]
    bare = data / "info.json"
    bare.write_text(json.dumps(info))
    run = RunDir(tmp_path / "run")
    add_checkpoint(run, stage=1, final=True, seed=1)
    result = CliRunner().invoke(app, ["analyze", "masks", "--run-dir", str(run.root), "--images", str(bare)])
    assert result.exit_code != 0


def _invoke_analyze(run, images, *extra):
    args = ["analyze", "masks", "--run-dir", run.root, "--images", images, "--scale", "48", *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_analyze_refuses_a_checkpoint_of_other_category_names(tmp_path):
    """Issue 22 item 16: ids alone matched before; names swapped for the same ids are now refused."""
    from lvisctl.errors import LvisctlError

    data = tmp_path / "data"
    data.mkdir()
    images = make_lvis(data)
    info = json.loads(images.read_text())
    cats = info["categories"]
    cats[0]["name"], cats[1]["name"] = cats[1]["name"], cats[0]["name"]
    swapped = data / "swapped.json"
    swapped.write_text(json.dumps(info))
    run = RunDir(tmp_path / "run")
    add_checkpoint(run, stage=1, final=True, seed=1)
    result = _invoke_analyze(run, swapped)
    assert isinstance(result.exception, LvisctlError), result.output
    assert "categories differ from those of checkpoint" in str(result.exception)
    assert "is 'c9' in the json but 'c3' in the checkpoint" in str(result.exception)
    assert not (run.root / "analysis").exists()


def test_analyze_refuses_a_path_as_name_before_any_work(tmp_path, monkeypatch):
    """Issue 22 item 24: --name ../x was refused only after the whole analysis, blaming manifest.json."""
    import lvisctl.analysis.analyze_masks as analyze_masks
    from lvisctl.errors import LvisctlError

    data = tmp_path / "data"
    data.mkdir()
    images = make_lvis(data)
    run = RunDir(tmp_path / "run")
    add_checkpoint(run, stage=1, final=True, seed=1)

    def no_analysis(*args, **kwargs):
        raise AssertionError("the analysis ran before the name was checked")

    monkeypatch.setattr(analyze_masks, "analyze_checkpoint", no_analysis)
    for name in ("../x", "a/b", "..", "/tmp/x"):
        result = _invoke_analyze(run, images, "--name", name)
        assert isinstance(result.exception, LvisctlError), (name, result.output)
        assert str(result.exception).startswith(f"--name {name!r}: a plain file name")
    assert not (tmp_path / "x.json").exists() and not (run.root / "x.json").exists()
