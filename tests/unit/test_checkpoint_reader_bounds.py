"""Issue 22 item 5: the restricted checkpoint reader allocates only what a file honestly holds. Only the
records the pickle references are read; a storage's declared size must equal its record's, a tensor must
fit inside its storage (no stride-0 view cloned to 1.6 GB), and a deflated record that would inflate
hundreds of times is a bomb."""

from __future__ import annotations

import zipfile

import pytest
import torch

from lvisctl.checkpoint_import import reader
from lvisctl.checkpoint_import.reader import read_checkpoint_file
from lvisctl.errors import LvisctlError


class Untrusted:
    """An object torch's weights-only loader refuses (as mmengine's meta objects): the file is read
    again by the restricted reader."""


def _save(path, obj) -> None:
    torch.save(obj, path)


def _rewrite_zip(path, change) -> None:
    """Copy the zip's records through ``change(name, data) -> data | None`` (None drops the record)."""
    with zipfile.ZipFile(path) as zf:
        items = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in items:
            new = change(info.filename, data)
            if new is not None:
                zf.writestr(info.filename, new)


def test_a_stride0_tensor_is_refused_before_it_is_cloned(tmp_path, monkeypatch):
    huge = torch.zeros(1).expand(20000, 20000)  # torch.save keeps the 1-element storage, stride (0, 0)
    restricted, plain = tmp_path / "r.pth", tmp_path / "p.pth"
    _save(restricted, {"state_dict": {"w": huge}, "meta": Untrusted()})
    _save(plain, {"state_dict": {"w": huge}})
    assert restricted.stat().st_size < 4096
    clones = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda t, *a, **k: clones.append(t.numel()) or real_clone(t))
    with pytest.raises(LvisctlError, match="needs 400000000 elements but its storage holds 1"):
        read_checkpoint_file(restricted)
    with pytest.raises(LvisctlError, match="larger than its storage"):
        read_checkpoint_file(plain)
    assert not clones or max(clones) < 1000


def test_unreferenced_records_are_never_read(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    _save(path, {"state_dict": {"w": torch.arange(6.0)}, "meta": Untrusted()})
    prefix = next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl"))[: -len("data.pkl")]
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{prefix}data/99", b"\0" * (8 << 20))  # nothing references it
    read = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile,
        "read",
        lambda zf, n, *a: read.append(getattr(n, "filename", n)) or real_read(zf, n, *a),
    )
    loaded = read_checkpoint_file(path)
    assert loaded.kind == "torch-restricted" and loaded.obj["state_dict"]["w"].tolist() == [0, 1, 2, 3, 4, 5]
    assert f"{prefix}data/99" not in read


def test_a_storage_whose_record_has_another_size_is_refused(tmp_path):
    path = tmp_path / "m.pth"
    _save(path, {"state_dict": {"w": torch.arange(6.0)}, "meta": Untrusted()})
    _rewrite_zip(
        path, lambda name, data: data + b"\0" * 16 if "/data/" in name and name[-1].isdigit() else data
    )
    with pytest.raises(LvisctlError, match=r"declares 6 elements \(24 bytes\) but its record holds 40 bytes"):
        read_checkpoint_file(path)


def test_a_referenced_deflate_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "_BOMB_MIN_BYTES", 1 << 20)  # the same rule at a test's scale
    n = (4 << 20) // 4
    path = tmp_path / "m.pth"
    _save(path, {"state_dict": {"w": torch.zeros(n)}, "meta": Untrusted()})
    with zipfile.ZipFile(path) as zf:
        items = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in items:
            zf.writestr(name, data)
    with pytest.raises(LvisctlError, match="decompression bomb"):
        read_checkpoint_file(path)


def test_honest_files_still_read(tmp_path):
    path = tmp_path / "m.pth"
    state = {"a": torch.randn(3, 4), "b": torch.randn(5)[1:4], "c": torch.randn(4, 3).t()}
    _save(path, {"state_dict": state, "meta": Untrusted()})
    got = read_checkpoint_file(path).obj["state_dict"]
    assert all(torch.equal(got[k], v) for k, v in state.items())
