"""Issue 22 item 18: ``runs show --verify`` says when an artifact's input exists nowhere any more."""

from lvisctl.rundir import RunDir
from tests.helpers.cli import run_cli


def test_verify_says_an_input_is_gone_after_it_was_replaced(tmp_path, capsys, monkeypatch):
    run = RunDir(tmp_path / "run")
    stage1 = run.root / "checkpoints" / "stage1_final.pt"
    stage1.parent.mkdir(parents=True)
    stage1.write_bytes(b"stage 1 weights")
    first = run.register("checkpoint", stage1, meta={"stage": 1})
    stage2 = run.root / "checkpoints" / "stage2_final.pt"
    stage2.write_bytes(b"stage 2 weights")
    run.register("checkpoint", stage2, inputs=[first], meta={"stage": 2})
    code, out, err = run_cli(["runs", "show", run.root, "--verify"], capsys, monkeypatch)
    assert code == 0 and "input gone" not in out and "warning" not in err

    stage1.write_bytes(b"retrained stage 1")  # train --stage 1 --overwrite: a new file, registered again
    run.register("checkpoint", stage1, meta={"stage": 1})
    code, out, err = run_cli(["runs", "show", run.root, "--verify"], capsys, monkeypatch)
    flat = " ".join(out.split())
    assert "input gone: stage1_final.pt" in flat, out
    assert code == 0 and "1 artifact(s) were made from inputs that exist nowhere any more" in err

    kept = run.root / "checkpoints" / "stage1_old.pt"  # the old content kept under another name: not gone
    kept.write_bytes(b"stage 1 weights")
    run.register("checkpoint", kept)
    code, out, err = run_cli(["runs", "show", run.root, "--verify"], capsys, monkeypatch)
    assert "input gone" not in out and "warning" not in err
