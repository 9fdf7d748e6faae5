"""Issue 22 (reliability round 3) through the CLI, on tiny data: the commands added last round get the
safety the old ones have. Items 1-4 (no data loss), 6-7 (untrusted paths), 19-22 (resume, full disk,
leftovers); the one line a user gets and what is left on disk."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lvisctl.rundir import RunDir
from tests.helpers.cli import one_line_error, run_cli
from tests.helpers.tiny_run import make_tiny_run


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_run(tmp_path)


def _edit_manifest(run: RunDir, index: int, path: str) -> None:
    data = json.loads(run.manifest_path.read_text())
    data["artifacts"][index]["path"] = path
    run.manifest_path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------ item 6
def test_runs_show_verify_refuses_an_absolute_manifest_path(tiny, tmp_path, capsys, monkeypatch):
    run, _ = tiny
    secret = tmp_path / "secret.pt"
    secret.write_bytes(b"not yours")
    art = run.artifacts("checkpoint")[0]
    data = json.loads(run.manifest_path.read_text())
    data["artifacts"][0].update(
        path=str(secret), sha256=__import__("hashlib").sha256(b"not yours").hexdigest()
    )
    run.manifest_path.write_text(json.dumps(data))
    code, out, err = run_cli(["runs", "show", run.root, "--verify"], capsys, monkeypatch)
    assert code == 2 and "refused" in out and "1 artifact(s) changed or missing" in err
    assert art.kind == "checkpoint"


def test_tta_infer_refuses_a_manifest_checkpoint_outside_the_run_dir(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    art = run.artifacts("checkpoint")[0]
    outside = tmp_path / "elsewhere.pt"
    shutil.move(run.root / art.path, outside)
    _edit_manifest(run, 0, str(outside))
    code, _, err = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
    assert "leaves the run directory" in one_line_error(code, err)
    assert not (run.root / "predictions").exists()


def test_a_symlink_leaving_the_run_dir_is_refused(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    art = run.artifacts("checkpoint")[0]
    outside = tmp_path / "elsewhere.pt"
    shutil.move(run.root / art.path, outside)
    os.symlink(outside, run.root / art.path)  # the manifest entry itself is unchanged
    code, _, err = run_cli(["tta-infer", "--run-dir", run.root, "--images", images], capsys, monkeypatch)
    assert "leaves the run directory" in one_line_error(code, err)


def test_train_overwrite_and_pruning_never_delete_outside_the_run_dir(tmp_path):
    from lvisctl.engine import checkpoint as ckpt_io
    from lvisctl.engine.distributed import DistInfo
    from lvisctl.engine.resume import clear_phase
    from lvisctl.errors import LvisctlError
    from lvisctl.rundir import atomic_write_json

    run = RunDir(tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for i, meta in enumerate(({"phase": "stage1", "stage": 1, "iteration": 1, "final": False},) * 2):
        rel = f"checkpoints/stage1_iter{i + 1}.pt"
        run.register("checkpoint", atomic_write_json(run.root / rel, {}), meta={**meta, "iteration": i + 1})
    _edit_manifest(run, 0, str(victim))
    with pytest.raises(LvisctlError, match="leaves the run directory"):
        clear_phase(run, ckpt_io.Phase(1), DistInfo())
    with pytest.raises(LvisctlError, match="leaves the run directory"):
        ckpt_io.prune_checkpoints(run, ckpt_io.Phase(1), keep=1)
    _edit_manifest(run, 0, "../victim.txt")
    with pytest.raises(LvisctlError, match="leaves the run directory"):
        ckpt_io.prune_checkpoints(run, ckpt_io.Phase(1), keep=1)
    assert victim.read_text() == "keep me" and len(run.artifacts()) == 2


def test_an_output_outside_the_run_dir_is_written_but_not_recorded(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    out = tmp_path / "elsewhere" / "p.json"
    code, _, err = run_cli(
        ["tta-infer", "--run-dir", run.root, "--images", images, "--out", out], capsys, monkeypatch
    )
    assert code == 0, err
    assert (tmp_path / "elsewhere" / "p.segm.json").is_file() and "not recorded" in err
    assert all(not Path(a.path).is_absolute() for a in run.artifacts())


def hold_in_subprocess(tmp_path: Path, enter: str):
    """A live second process that enters the context manager ``enter`` (python source) and waits: the
    other writer a lock must stop. Returns the Popen; kill it when done."""
    import subprocess
    import sys
    import textwrap
    import time

    ready = tmp_path / f"ready{time.monotonic_ns()}"
    code = textwrap.dedent(
        f"""
        import pathlib, time
        from lvisctl.rundir import RunDir
        from lvisctl.rundir.outputs import output_lock
        with {enter}:
            pathlib.Path({str(ready)!r}).write_text("x")
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "lock holder did not start"
        time.sleep(0.05)
    return proc


# ------------------------------------------------------------------------------------------ item 1
def _mmdet_source(tmp_path: Path) -> Path:
    from tests.helpers.checkpoint_files import _mmdet_file

    return _mmdet_file(tmp_path, "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")[0]


def test_import_checkpoint_takes_the_stage1_phase_lock(tmp_path, capsys, monkeypatch):
    source = _mmdet_source(tmp_path)
    run = tmp_path / "run"
    holder = hold_in_subprocess(tmp_path, f"RunDir({str(run)!r}).phase_lock('stage1')")  # a training run
    try:
        code, _, err = run_cli(["import-checkpoint", source, "--run-dir", run], capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    assert "phase 'stage1' is being written by pid" in one_line_error(code, err)
    assert not (run / "checkpoints").exists() and not (run / "manifest.json").exists()


def test_import_checkpoint_checks_for_an_existing_checkpoint_under_the_lock(tmp_path, monkeypatch):
    """Two imports started together: the second must see the first's file once it holds the lock, not
    decide from what existed when it started."""
    from lvisctl.checkpoint_import import importer
    from lvisctl.errors import LvisctlError

    source = _mmdet_source(tmp_path)
    run = tmp_path / "run"
    importer.import_checkpoint(source, run)
    first = (run / "checkpoints" / "stage1_final.pt").read_bytes()
    seen = []
    real_lock = RunDir.phase_lock

    def lock_after_check(self, phase, **kw):  # what the old code did: existence checked before any lock
        seen.append(phase)
        return real_lock(self, phase, **kw)

    monkeypatch.setattr(RunDir, "phase_lock", lock_after_check)
    with pytest.raises(LvisctlError, match="already exists; pass --overwrite"):
        importer.import_checkpoint(source, run)
    assert seen == ["stage1"] and (run / "checkpoints" / "stage1_final.pt").read_bytes() == first


# ------------------------------------------------------------------------------------------ items 2-4
def results_files(folder: Path, images: Path, name: str, shift: int = 0) -> Path:
    """A tta-infer style pair ``<name>.segm.json`` / ``<name>.bbox.json``: the GT objects as detections."""
    anns = json.loads(images.read_text())["annotations"]
    recs = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + shift, *a["bbox"][1:]],
            "score": 0.9,
            "segmentation": a["segmentation"],
        }
        for a in anns
    ]
    (folder / f"{name}.segm.json").write_text(json.dumps([{**r, "bbox": None} for r in recs]))
    (folder / f"{name}.bbox.json").write_text(json.dumps([{**r, "segmentation": None} for r in recs]))
    for path in (folder / f"{name}.segm.json", folder / f"{name}.bbox.json"):
        data = [{k: v for k, v in r.items() if v is not None} for r in json.loads(path.read_text())]
        path.write_text(json.dumps(data))
    return folder / f"{name}.segm.json"


def test_ensemble_refuses_an_output_that_is_one_of_its_inputs(tiny, tmp_path, capsys, monkeypatch):
    _, images = tiny
    a, b = results_files(tmp_path, images, "A"), results_files(tmp_path, images, "B", shift=1)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("[AB].*.json")}
    for out in (tmp_path / "A.json", tmp_path / "B"):  # B: the pair B.segm.json / B.bbox.json
        code, _, err = run_cli(
            ["ensemble", a, b, "--out", out, "--overwrite", "--images", images], capsys, monkeypatch
        )
        assert "is also an input of this command" in one_line_error(code, err)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("[AB].*.json")} == before
    assert not (tmp_path / ".partial").exists()


def test_evaluate_refuses_to_write_over_what_it_scores(tiny, tmp_path, capsys, monkeypatch):
    _, images = tiny
    res = results_files(tmp_path, images, "R")
    before = res.read_bytes()
    for out in (res, images):
        code, _, err = run_cli(
            ["evaluate", res, "--gt", images, "--iou-type", "segm", "--out", out, "--overwrite"],
            capsys,
            monkeypatch,
        )
        assert "is also an input of this command" in one_line_error(code, err)
    assert res.read_bytes() == before and json.loads(images.read_text())["annotations"]


def test_submit_and_tta_infer_refuse_an_output_that_is_an_input(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    res = results_files(tmp_path, images, "R")
    code, _, err = run_cli(
        ["submit", res, "--image-info", images, "--out", images, "--overwrite"], capsys, monkeypatch
    )
    assert "is also an input of this command" in one_line_error(code, err)
    out = images.with_name("val.segm.json")  # tta-infer X.json writes X.segm.json: make it the images json
    shutil.copy(images, out)
    code, _, err = run_cli(
        ["tta-infer", "--run-dir", run.root, "--images", out, "--out", images, "--overwrite"],
        capsys,
        monkeypatch,
    )
    assert "is also an input of this command" in one_line_error(code, err)


def test_two_tta_infer_of_different_run_dirs_on_one_out(tiny, tmp_path, capsys, monkeypatch):
    run, images = tiny
    out = tmp_path / "shared" / "p.json"
    other = tmp_path / "other"
    holder = hold_in_subprocess(  # another run dir's tta-infer writing the same --out right now
        tmp_path,
        f"output_lock([{str(out.with_name('p.segm.json'))!r}, {str(out.with_name('p.bbox.json'))!r}])",
    )
    try:
        code, _, err = run_cli(
            ["tta-infer", "--run-dir", run.root, "--images", images, "--out", out], capsys, monkeypatch
        )
    finally:
        holder.kill()
        holder.wait()
    assert "is being written by pid" in one_line_error(code, err)
    assert not out.with_name("p.segm.json").exists() and not other.exists()
    code, _, err = run_cli(  # the holder is gone: the command runs, and leaves no lock file behind
        ["tta-infer", "--run-dir", run.root, "--images", images, "--out", out], capsys, monkeypatch
    )
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.bbox.json", "p.segm.json"]


def test_two_ensembles_on_one_out(tiny, tmp_path, capsys, monkeypatch):
    _, images = tiny
    a, b = results_files(tmp_path, images, "A"), results_files(tmp_path, images, "B", shift=1)
    out = tmp_path / "E.json"
    holder = hold_in_subprocess(tmp_path, f"output_lock([{str(tmp_path / 'E.segm.json')!r}])")
    try:
        code, _, err = run_cli(["ensemble", a, b, "--out", out, "--images", images], capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    assert "is being written by pid" in one_line_error(code, err)
    assert not (tmp_path / "E.segm.json").exists() and not (tmp_path / ".partial").exists()


# ------------------------------------------------------------------------------------------ item 7
@pytest.mark.parametrize(
    "listing",
    [
        "ImageID\nimg1\n../outside/secret\n",
        "ImageID\nimg1\nsub/img2\n",
        "file_name\nimg1.png\n/etc/passwd\n",
        "img1.png\n../outside/secret.png\n",
    ],
)
def test_an_image_list_entry_never_leaves_the_image_root(tiny, tmp_path, capsys, monkeypatch, listing):
    run, images = tiny
    folder = images.parent
    (tmp_path / "outside").mkdir()
    shutil.copy(folder / "img1.png", tmp_path / "outside" / "secret.jpg")
    shutil.copy(folder / "img1.png", tmp_path / "outside" / "secret.png")
    (folder / "sub").mkdir()
    shutil.copy(folder / "img2.png", folder / "sub" / "img2.jpg")
    listed = tmp_path / "list.csv"
    listed.write_text(listing)
    code, _, err = run_cli(
        ["tta-infer", "--run-dir", run.root, "--images", folder, "--image-list", listed], capsys, monkeypatch
    )
    line = one_line_error(code, err)
    bad_line = 2 if listing.startswith("img1") else 3  # plain lines have no header
    assert f"list.csv: line {bad_line}:" in line and ("is a name" in line or "under the image root" in line)
    assert not (run.root / "predictions").exists()


# ------------------------------------------------------------------------------------------ items 19-20
def _chunk_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".partial/*/rank*_*.json"))


def test_a_hand_edited_well_formed_chunk_is_recomputed(tiny, capsys, monkeypatch):
    run, images = tiny
    args = ["tta-infer", "--run-dir", run.root, "--images", images, "inference.chunk_size=1"]
    assert run_cli([*args, "--out", run.root / "full.json"], capsys, monkeypatch)[0] == 0
    code, _, _ = run_cli([*args, "--out", run.root / "r.json", "--max-chunks", "2"], capsys, monkeypatch)
    assert code == 75
    chunk = _chunk_files(run.root)[0]
    data = json.loads(chunk.read_text())
    assert data["records"]
    for rec in data["records"]:  # well-formed, plausible, wrong
        rec["score"] = 0.999
    chunk.write_text(json.dumps(data))
    code, _, err = run_cli([*args, "--out", run.root / "r.json"], capsys, monkeypatch)
    assert code == 0, err
    assert "damaged chunk file(s) deleted and recomputed" in err
    for kind in ("segm", "bbox"):
        assert (run.root / f"r.{kind}.json").read_bytes() == (run.root / f"full.{kind}.json").read_bytes()


def test_ensemble_resumed_with_another_chunk_size_finishes(tiny, tmp_path, capsys, monkeypatch):
    _, images = tiny
    a, b = results_files(tmp_path, images, "A"), results_files(tmp_path, images, "B", shift=1)
    base = ["ensemble", a, b, "--images", images]
    assert run_cli([*base, "--out", tmp_path / "one.json"], capsys, monkeypatch)[0] == 0
    out = ["--out", tmp_path / "E.json"]
    code, _, _ = run_cli([*base, *out, "--chunk-size", "1", "--max-chunks", "2"], capsys, monkeypatch)
    assert code == 75 and len(_chunk_files(tmp_path)) == 2  # a kill after two chunks leaves the same
    code, _, err = run_cli([*base, *out, "--chunk-size", "2"], capsys, monkeypatch)
    assert code == 0, err
    for kind in ("segm", "bbox"):
        assert (tmp_path / f"E.{kind}.json").read_bytes() == (tmp_path / f"one.{kind}.json").read_bytes()
    assert not (tmp_path / ".partial").exists()


# ------------------------------------------------------------------------------------------ item 22
def test_a_failed_ensemble_leaves_no_partial_folder(tiny, tmp_path, capsys, monkeypatch):
    from lvisctl.inference import ensemble

    _, images = tiny
    a, b = results_files(tmp_path, images, "A"), results_files(tmp_path, images, "B", shift=1)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")  # fails after the chunk folder was made

    monkeypatch.setattr(ensemble, "fuse_detections", broken)
    code, _, err = run_cli(
        ["ensemble", a, b, "--images", images, "--out", tmp_path / "E.json"], capsys, monkeypatch
    )
    assert "no space left on device" in one_line_error(code, err)
    assert not (tmp_path / ".partial").exists() and not list(tmp_path.glob("E.*"))


# ------------------------------------------------------------------------------------------ item 21
# A full disk is simulated where the real one cannot be made in a test: torch.save behaves as it does on
# a full tmpfs (checked by hand with `mount -t tmpfs -o size=2m`): through its own file writer (a path)
# it raises a bare RuntimeError("unexpected pos"); through a Python file object the same RuntimeError
# carries the OSError(ENOSPC) underneath as its context.
def _full_disk_torch_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    try:
        f.write(b"PK")
        raise OSError(28, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904


def test_a_checkpoint_save_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import torch

    from lvisctl.engine.checkpoint import save_checkpoint
    from lvisctl.errors import LvisctlError

    monkeypatch.setattr(torch, "save", _full_disk_torch_save)
    run = RunDir(tmp_path / "run")
    state = {"stage": 1, "phase": "stage1", "iteration": 10, "epoch": 0, "final": False, "model": {}}
    with pytest.raises(LvisctlError, match=r"stage1_iter0*10.pt: cannot write \(no space left on device\)"):
        save_checkpoint(run, state)
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.pt*"))


def test_import_checkpoint_on_a_full_disk(tmp_path, capsys, monkeypatch):
    import torch

    source = _mmdet_source(tmp_path)
    monkeypatch.setattr(torch, "save", _full_disk_torch_save)
    run = tmp_path / "run"
    code, _, err = run_cli(["import-checkpoint", source, "--run-dir", run], capsys, monkeypatch)
    assert "no space left on device" in one_line_error(code, err)
    assert not list(run.rglob("*.pt*")) and not (run / "checkpoints").exists()


def test_data_synth_on_a_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch):
    from lvisctl.data import synth

    def full(folder, *args, **kwargs):
        (folder / "lvis_v1_train.json").write_text("{")
        raise OSError(28, "No space left on device", str(folder / "train2017" / "000001.jpg"))

    monkeypatch.setattr(synth, "_write_dataset", full)
    code, _, err = run_cli(
        ["data", "synth", "--preset", "tiny", "--out", tmp_path / "sy"], capsys, monkeypatch
    )
    assert "sy: cannot write (no space left on device)" in one_line_error(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_data_synth_into_a_read_only_run_dir_leaves_no_dataset(tmp_path, capsys, monkeypatch):
    from lvisctl.rundir.io import write_error

    def read_only(self, *args, **kwargs):
        raise write_error(self.root, OSError(30, "Read-only file system"))

    monkeypatch.setattr(RunDir, "register", read_only)
    args = [
        "data",
        "synth",
        "--preset",
        "tiny",
        "--no-images",
        "--out",
        tmp_path / "sy",
        "--run-dir",
        tmp_path / "r",
    ]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert "read-only file system" in one_line_error(code, err)
    assert not (tmp_path / "sy").exists()


def test_ensemble_into_a_read_only_run_dir_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    _, images = tiny
    a, b = results_files(tmp_path, images, "A"), results_files(tmp_path, images, "B", shift=1)

    def read_only(self, *args, **kwargs):  # what the manifest's file lock does in a read-only folder
        raise OSError(30, "Read-only file system", str(self.root / ".manifest.lock"))

    monkeypatch.setattr(RunDir, "register", read_only)
    run = tmp_path / "r"
    run.mkdir()
    code, _, err = run_cli(
        ["ensemble", a, b, "--images", images, "--out", run / "E.json", "--run-dir", run], capsys, monkeypatch
    )
    assert "r/.manifest.lock: cannot write (read-only file system)" in one_line_error(code, err)
    assert not (run / ".partial").exists()


@pytest.mark.parametrize("stdout", ["closed", "/dev/full"])
def test_evaluate_with_stdout_closed_or_full(tiny, tmp_path, stdout):
    import subprocess
    import sys

    if stdout == "/dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    _, images = tiny
    res = results_files(tmp_path, images, "R")
    cmd = [sys.executable, "-m", "lvisctl", "evaluate", str(res), "--gt", str(images), "--iou-type", "segm"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open("/dev/full" if stdout != "closed" else os.devnull, "w") as sink:
        if stdout == "closed":
            cmd = ["bash", "-c", " ".join(f"'{c}'" for c in cmd) + " >&-"]
        done = subprocess.run(cmd, stdout=sink, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    line = one_line_error(done.returncode, done.stderr)
    assert "val.json" not in line  # not blamed on the ground truth
    assert ("standard output is closed" if stdout == "closed" else "no space left on device") in line


# ------------------------------------------------------------------------------------------ item 22
def test_a_killed_synths_partial_folder_is_removed_by_the_next(tmp_path, capsys, monkeypatch):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".sy.partial-{dead.pid}"
    (stale / "train2017").mkdir(parents=True)
    args = ["data", "synth", "--preset", "tiny", "--no-images", "--out", tmp_path / "sy"]
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    assert not stale.exists() and (tmp_path / "sy" / "lvis_v1_train.json").is_file()
    alive = subprocess.Popen(["sleep", "30"])  # a concurrent synth's folder is kept
    running = tmp_path / f".sy.partial-{alive.pid}"
    running.mkdir()
    try:
        assert run_cli([*args, "--overwrite", "--seed", "1"], capsys, monkeypatch)[0] == 0
        assert running.is_dir()
    finally:
        alive.kill()
        alive.wait()


def test_visualize_on_a_full_disk_leaves_no_empty_folder(tiny, tmp_path, capsys, monkeypatch):
    from lvisctl.visualization import render

    run, images = tiny

    def full(pixels, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(render, "save_png", full)
    code, _, err = run_cli(
        ["visualize", "--run-dir", run.root, "--gt", images, "--out", tmp_path / "vis"], capsys, monkeypatch
    )
    assert "no space left on device" in one_line_error(code, err)
    assert not (tmp_path / "vis").exists()


def test_import_checkpoint_killed_before_recording_reruns(tmp_path, monkeypatch):
    """Found by benchmarks/fault_injection.py: a kill after the checkpoint file was renamed into place but
    before the manifest recorded it made the same command refuse with 'already exists' forever."""
    from lvisctl.checkpoint_import import importer

    source = _mmdet_source(tmp_path)
    run = tmp_path / "run"
    real_register = RunDir.register

    def killed(self, kind, *args, **kwargs):
        if kind == "checkpoint":
            raise KeyboardInterrupt  # stands in for SIGKILL at this point
        return real_register(self, kind, *args, **kwargs)

    monkeypatch.setattr(RunDir, "register", killed)
    with pytest.raises(KeyboardInterrupt):
        importer.import_checkpoint(source, run)
    assert (run / "checkpoints" / "stage1_final.pt").is_file() and not RunDir(run).find("checkpoint")
    monkeypatch.setattr(RunDir, "register", real_register)
    result = importer.import_checkpoint(source, run)  # the same command, no --overwrite
    assert result.checkpoint.path == "checkpoints/stage1_final.pt" and RunDir(run).find("report")
