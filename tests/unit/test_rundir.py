"""Run directory: manifest records, lineage, atomic writes, locking, sha256 checks."""

from __future__ import annotations

import json
import threading

import pytest

from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir, atomic_output, atomic_write_json, sha256_file


def test_register_records_path_hash_command_config_and_inputs(tmp_path):
    run = RunDir(tmp_path / "run")
    gt = tmp_path / "gt.json"
    gt.write_text("{}")
    ckpt = atomic_write_json(run.root / "checkpoints" / "a.json", {"w": 1})
    ckpt_art = run.register("checkpoint", ckpt, inputs=[gt], config={"seed": 3}, command="lvisctl train")
    pred = atomic_write_json(run.root / "predictions" / "p.json", [])
    run.register("predictions", pred, inputs=[ckpt_art, gt], meta={"gt": str(gt)})

    data = json.loads((run.root / "manifest.json").read_text())
    first, second = data["artifacts"]
    assert first["path"] == "checkpoints/a.json"
    assert first["sha256"] == sha256_file(ckpt)
    assert first["size"] == ckpt.stat().st_size
    assert first["command"] == "lvisctl train"
    assert first["config"] == {"seed": 3}
    assert first["inputs"] == [{"path": str(gt.resolve()), "sha256": sha256_file(gt), "kind": "external"}]
    assert second["inputs"][0] == {
        "path": "checkpoints/a.json",
        "sha256": first["sha256"],
        "kind": "checkpoint",
    }
    assert run.latest("predictions").meta == {"gt": str(gt)}


def test_latest_returns_newest_and_filters_by_meta(tmp_path):
    run = RunDir(tmp_path)
    for i, stage in enumerate([1, 1, 2]):
        path = atomic_write_json(tmp_path / f"c{i}.json", {"i": i})
        run.register("checkpoint", path, meta={"stage": stage})
    assert run.latest("checkpoint").path == "c2.json"
    assert run.latest("checkpoint", stage=1).path == "c1.json"
    with pytest.raises(LvisctlError, match="no metrics artifact"):
        run.latest("metrics")


def test_resolve_detects_missing_and_modified_files(tmp_path):
    run = RunDir(tmp_path)
    path = atomic_write_json(tmp_path / "m.json", {"AP": 0.1})
    art = run.register("metrics", path)
    assert run.resolve(art) == path
    path.write_text('{"AP": 0.9}')
    with pytest.raises(LvisctlError, match="sha256 no longer matches"):
        run.resolve(art)
    path.unlink()
    with pytest.raises(LvisctlError, match="missing on disk"):
        run.resolve(art)


def test_output_path_refuses_to_overwrite_without_flag(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "out.json").write_text("[]")
    with pytest.raises(LvisctlError, match="already exists"):
        run.output_path("out.json")
    assert run.output_path("out.json", overwrite=True) == tmp_path / "out.json"


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_concurrent_registrations_are_all_kept(tmp_path):
    run = RunDir(tmp_path)
    paths = [atomic_write_json(tmp_path / f"f{i}.json", {"i": i}) for i in range(16)]

    def reg(p):
        RunDir(tmp_path).register("metrics", p)

    threads = [threading.Thread(target=reg, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.path for a in run.artifacts()) == sorted(p.name for p in paths)


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(LvisctlError, match="manifest.json: not valid json"):
        RunDir(tmp_path).artifacts()


def test_atomic_files_get_normal_permissions(tmp_path):
    import os

    path = atomic_write_json(tmp_path / "a.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_unregister_drops_only_that_entry(tmp_path):
    run = RunDir(tmp_path)
    a = run.register("log", atomic_write_json(tmp_path / "a.json", {}))
    run.register("log", atomic_write_json(tmp_path / "b.json", {}))
    run.unregister(a.path)
    assert [x.path for x in run.artifacts()] == ["b.json"]


def test_run_dir_is_created_on_first_write_only(tmp_path):
    run = RunDir(tmp_path / "new")
    assert not run.root.exists()  # a command that fails on bad input leaves nothing behind
    assert run.artifacts() == []
    run.register("log", atomic_write_json(run.root / "a.json", {}))
    assert (run.root / "manifest.json").exists()
