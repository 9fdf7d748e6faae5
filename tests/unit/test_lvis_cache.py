"""The parsed-json cache: keyed by sha256, atomic, invalidated by a changed file, refused when damaged."""

import json

import numpy as np
import pytest

import lvisctl.data.lvis_cache as lvis_cache
from lvisctl.data.lvis import load_lvis
from lvisctl.data.lvis_cache import CacheDamaged, default_cache_dir, load_lvis_shared, open_entry
from lvisctl.data.synth import generate_synthetic_lvis
from lvisctl.errors import LvisctlError
from lvisctl.rundir.io import sha256_file
from tests.helpers.data import same


@pytest.fixture
def train_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "ds"
    return generate_synthetic_lvis(out, train_images=10, val_images=2, num_categories=5, write_images=False)[
        "train"
    ]


def _load(path, cache):
    return load_lvis_shared(path, cache_dir=cache, min_bytes=0)


def _entries(cache):
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


def _assert_equal_to_parse(store, path):
    data = load_lvis(path)
    assert list(store.images) == list(data.images)
    for i in data.images:
        assert same(store.images[i], data.images[i]) and same(store.anns_by_image[i], data.anns_by_image[i])


def test_second_load_maps_the_entry_without_parsing(train_json, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = _load(train_json, cache)
    assert _entries(cache) == [sha256_file(train_json)]
    monkeypatch.setattr(lvis_cache, "load_lvis", lambda *a, **k: pytest.fail("parsed a cached file"))
    again = _load(train_json, cache)
    assert isinstance(again.store.arrays["coords"], np.memmap)
    _assert_equal_to_parse(again, train_json)
    assert again.category_stats().instance_count.tolist() == first.category_stats().instance_count.tolist()
    assert again.path == train_json and again.image_root == train_json.parent


def test_changed_file_is_a_miss_and_its_old_entry_goes(train_json, tmp_path):
    cache = tmp_path / "cache"
    _load(train_json, cache)
    old = sha256_file(train_json)
    raw = json.loads(train_json.read_text())
    raw["annotations"][0]["bbox"] = [1.5, 2.5, 3.0, 4.0]
    train_json.write_text(json.dumps(raw))
    store = _load(train_json, cache)
    ann_id, image_id = raw["annotations"][0]["id"], raw["annotations"][0]["image_id"]
    ann = next(a for a in store.anns_by_image[image_id] if a["id"] == ann_id)
    assert ann["bbox"] == [1.5, 2.5, 3.0, 4.0]
    assert _entries(cache) == [sha256_file(train_json)] != [old]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda e: _flip_last_byte(e / "coords.npy"), "coords.npy: annotation cache file damaged"),
        (lambda e: (e / "meta.json").write_text("{"), "meta.json: annotation cache entry unreadable"),
        (lambda e: (e / "ann_end.npy").unlink(), "ann_end.npy: annotation cache file missing"),
        (lambda e: _set_meta(e, source_sha256="0" * 64), "was made from another file"),
        (lambda e: _set_meta(e, format=0), "annotation cache format 0"),
    ],
)
def test_damaged_entry_is_refused_and_rebuilt(train_json, tmp_path, capsys, damage, expected):
    cache = tmp_path / "cache"
    _load(train_json, cache)
    entry = cache / sha256_file(train_json)
    damage(entry)
    with pytest.raises(CacheDamaged, match=expected):
        open_entry(entry, entry.name)
    store = _load(train_json, cache)  # one line on stderr, then parsed again
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "not used" in err[0]
    _assert_equal_to_parse(store, train_json)
    open_entry(entry, entry.name)  # the rebuilt entry passes its checks


def test_inconsistent_arrays_with_matching_checksums_are_refused(train_json, tmp_path):
    cache = tmp_path / "cache"
    _load(train_json, cache)
    entry = cache / sha256_file(train_json)
    ends = np.load(entry / "poly_end.npy")
    np.save(entry / "poly_end.npy", ends + 1)  # a writer bug, not bit rot: checksums re-recorded
    meta = json.loads((entry / "meta.json").read_text())
    file = entry / "poly_end.npy"
    meta["files"]["poly_end"] = {"bytes": file.stat().st_size, "crc32": lvis_cache._crc32(file)}
    (entry / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheDamaged, match="inconsistent .*poly_end do not cover coords"):
        open_entry(entry, entry.name)


def test_failed_write_leaves_no_entry(train_json, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []

    def failing_save(path, array, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        np.lib.format.write_array(open(path, "wb"), array, allow_pickle=False)

    monkeypatch.setattr(lvis_cache.np, "save", failing_save)
    with pytest.raises(OSError):
        _load(train_json, cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_bad_json_is_one_error_and_no_entry(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"id": 1}], "categories": []}')
    with pytest.raises(LvisctlError, match="bad.json"):
        _load(bad, tmp_path / "cache")
    assert _entries(tmp_path / "cache") == []


def test_small_files_and_off_skip_the_cache(train_json, tmp_path, monkeypatch):
    store = load_lvis_shared(train_json, cache_dir=tmp_path / "cache")  # under MIN_CACHED_BYTES
    assert not (tmp_path / "cache").exists() and not isinstance(store.store.arrays["coords"], np.memmap)
    monkeypatch.setenv("LVISCTL_CACHE_DIR", "off")
    assert default_cache_dir() is None
    monkeypatch.setenv("LVISCTL_CACHE_DIR", str(tmp_path / "c2"))
    assert default_cache_dir() == tmp_path / "c2"


def _flip_last_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def _set_meta(entry, **changes):
    meta = json.loads((entry / "meta.json").read_text())
    meta.update(changes)
    (entry / "meta.json").write_text(json.dumps(meta))


def test_pseudolabel_reads_the_train_json_through_the_cache(train_json, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lvisctl.inference.pseudolabel_job import _load_images

    monkeypatch.setenv("LVISCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(lvis_cache, "MIN_CACHED_BYTES", 0)
    info = SimpleNamespace(path=train_json, image_root=None)
    first = _load_images(info, "missing")
    assert _entries(tmp_path / "cache") == [sha256_file(train_json)]
    monkeypatch.setattr(lvis_cache, "load_lvis", lambda *a, **k: pytest.fail("parsed a cached file"))
    again = _load_images(info, "missing")
    assert again.num_annotations == first.num_annotations > 0
