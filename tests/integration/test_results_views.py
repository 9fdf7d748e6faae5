"""Issue 26 item 7: looking at results. visualize with nothing above the threshold and --topk; a loss curve
of one logged point; runs show --summary and runs compare; TensorBoard tags shared by the phases."""

from __future__ import annotations

from typer.testing import CliRunner

from lvisctl.cli.app import app
from lvisctl.engine.checkpoint import Phase
from lvisctl.engine.logging import TrainLogger, plot_loss_curves, tensorboard_dir
from lvisctl.rundir import RunDir
from lvisctl.rundir.io import atomic_write_json
from tests.helpers.cli import invoke as cli_invoke


def invoke(*args):
    return cli_invoke("visualize", *args)


def test_visualize_says_how_far_the_threshold_is_and_topk_draws_anyway(tmp_path, inputs):  # noqa: F811
    gt, preds, _ = inputs  # predictions on image 1 with scores 0.9 and 0.1
    run = tmp_path / "run"
    result = invoke("--run-dir", run, "--predictions", preds, "--gt", gt, "--score-thresh", "0.95")
    assert result.exit_code == 0, result.output
    assert "0 predictions >= 0.95 (max score 0.90); lower --score-thresh or pass --topk 5" in result.output
    out = tmp_path / "top"
    result = invoke("--run-dir", run, "--predictions", preds, "--gt", gt, "--topk", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "drew 5 instances on 3 images" in result.output  # 3 GT + both predictions of image 1
    assert "0 predictions" not in result.output
    result = invoke(
        "--run-dir", run, "--predictions", preds, "--gt", gt, "--topk", "1", "--out", tmp_path / "t1"
    )
    assert "drew 4 instances on 3 images" in result.output


def test_a_loss_curve_of_one_logged_point_draws_a_marker(tmp_path, monkeypatch):
    import matplotlib.axes

    calls = []
    real = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("marker"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    plot_loss_curves([{"iteration": 20, "loss": 1.5, "loss_mask": 0.5, "lr": 0.01}], tmp_path / "one.png")
    assert calls and all(m == "o" for m in calls)
    calls.clear()
    two = [{"iteration": i, "loss": 1.0, "lr": 0.01} for i in (1, 2)]
    plot_loss_curves(two, tmp_path / "two.png")
    assert calls and all(m is None for m in calls)


def _register(run: RunDir, kind: str, rel: str, payload, **kw):
    atomic_write_json(run.root / rel, payload)
    return run.register(kind, run.root / rel, **kw)


def _run_with_results(path, segm_ap: float) -> RunDir:
    run = RunDir(path)
    for phase, it in (("stage1", 10), ("stage2", 5)):
        stage = 1 if phase == "stage1" else 2
        meta = {"stage": stage, "phase": phase, "iteration": it, "final": True}
        _register(run, "checkpoint", f"checkpoints/{phase}_final.pt", {}, meta=meta)
        pred = _register(
            run,
            "predictions",
            f"predictions/val_{phase}.segm.json",
            [],
            meta={"iou_type": "segm", "group": phase, "checkpoint": f"checkpoints/{phase}_final.pt"},
        )
        ap = segm_ap + (0.05 if stage == 2 else 0.0)
        metrics = {"segm": {"AP": ap}, "bbox": {"AP": ap - 0.01}}
        _register(
            run, "metrics", f"metrics/{phase}.json", metrics, inputs=[pred], meta={"iou_types": ["segm"]}
        )
    return run


def test_runs_show_summary_and_compare(tmp_path):
    a = _run_with_results(tmp_path / "a", 0.20)
    b = _run_with_results(tmp_path / "b", 0.23)
    cli = CliRunner()
    shown = cli.invoke(app, ["runs", "show", str(a.root), "--summary"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    lines = [ln for ln in shown.output.splitlines() if "stage" in ln]
    assert "stage1_final.pt (iter 10)" in lines[0] and "20.0" in lines[0] and "19.0" in lines[0]
    assert "stage2_final.pt (iter 5)" in lines[1] and "25.0" in lines[1]
    compared = cli.invoke(app, ["runs", "compare", str(a.root), str(b.root)], terminal_width=250)
    assert compared.exit_code == 0, compared.output
    rows = [ln for ln in compared.output.splitlines() if "stage1_final" in ln]
    assert rows and "+3.0" in rows[0]
    missing = cli.invoke(app, ["runs", "compare", str(a.root), str(tmp_path / "nope")])
    assert "not a run directory" in str(missing.exception) or "does not exist" in str(missing.exception)


def test_tensorboard_tags_are_the_same_in_every_phase(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for phase in (Phase(1), Phase(2, "finetune_bags")):
        tb = tensorboard_dir(tmp_path, phase.name)
        logger = TrainLogger(total=2, start=0, tensorboard_dir=tb, stage=phase)
        logger.scalars(1, {"loss": 1.0, "lr": 0.1}, prefix=logger.tag)
        logger.close()
    for folder in (tmp_path / "tensorboard", tmp_path / "tensorboard" / "finetune_bags"):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        assert {"train/loss", "train/lr"} <= set(acc.Tags()["scalars"]), folder
