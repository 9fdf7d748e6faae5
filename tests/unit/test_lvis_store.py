"""LvisStore: the train file as numpy buffers gives the same records, statistics and training samples."""

import json

import numpy as np
import pytest
import torch

from lvisctl.config import load_config
from lvisctl.data.dataset import build_train_data
from lvisctl.data.lvis import load_lvis
from lvisctl.data.lvis_store import LvisStore, serialize_lvis, store_arrays, store_problems
from lvisctl.data.synth import generate_synthetic_lvis
from lvisctl.data.train_data import build_train_data as build_engine_data
from lvisctl.rundir import RunDir
from tests.helpers.data import same


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "ds"
    return generate_synthetic_lvis(out, train_images=12, val_images=2, image_size=64, num_categories=6)


def test_store_records_equal_load_lvis(synth):
    data = load_lvis(synth["train"])
    store = serialize_lvis(load_lvis(synth["train"]))
    assert isinstance(store, LvisStore)
    assert list(store.images) == list(data.images) and len(store.anns_by_image) == len(data.images)
    for image_id in data.images:
        assert same(store.images[image_id], data.images[image_id])
        assert same(store.anns_by_image[image_id], data.anns_by_image[image_id])
        assert store.image_path(image_id) == data.image_path(image_id)
    assert store.num_annotations == data.num_annotations > 0
    assert 10**9 not in store.images and store.anns_by_image.get(10**9) is None and "1" not in store.images


def test_store_category_stats_equal_counting_the_records(synth):
    data = load_lvis(synth["train"])
    ours, ref = serialize_lvis(data).category_stats(), data.category_stats()
    assert ours.category_map.cat_ids == ref.category_map.cat_ids and ours.names == ref.names
    assert np.array_equal(ours.image_count, ref.image_count) and ours.image_count.sum() > 0
    assert np.array_equal(ours.instance_count, ref.instance_count)
    assert ours.frequency == ref.frequency and ours.num_images == ref.num_images


def test_rle_segmentations_and_unicode_survive(tmp_path):
    rle = {"size": [4, 4], "counts": [0, 8, 8]}
    image = {
        "id": 5,
        "width": 4,
        "height": 4,
        "coco_url": "x/a.jpg",
        "neg_category_ids": [],
        "not_exhaustive_category_ids": [],
        "note": "Zürich ✓",
    }
    ann = {"id": 1, "image_id": 5, "category_id": 2, "segmentation": rle, "area": 8.0, "bbox": [0, 0, 2, 4]}
    cats = [{"id": 2, "name": "b", "frequency": "r"}]
    path = tmp_path / "rle.json"
    path.write_text(json.dumps({"images": [image], "annotations": [ann], "categories": cats}))
    store = serialize_lvis(load_lvis(path))
    assert same(store.images[5], image) and same(store.anns_by_image[5], [ann])


def test_damaged_arrays_are_reported(synth):
    arrays = store_arrays(load_lvis(synth["train"]))
    assert store_problems(arrays) == []
    cut = {**arrays, "coords": arrays["coords"][:-1]}
    assert any("poly_end" in p for p in store_problems(cut))
    shuffled = {**arrays, "image_order": arrays["image_order"][::-1].copy()}
    assert store_problems(shuffled) == ["array image_order does not sort unique image ids"]
    assert "missing array(s) coords" in store_problems({k: v for k, v in arrays.items() if k != "coords"})[0]


def _aug_cfg():
    return load_config(
        None,
        [
            "augment.train_scales=[32, 48]",
            "augment.max_size=96",
            "augment.mosaic.prob=0.5",
            "augment.mosaic.size=64",
            "augment.rotate.prob=0.5",
            "sampler.rfs_threshold=1.0",
        ],
    )


def test_training_samples_are_identical_from_the_store(synth):
    cfg = _aug_cfg()
    data = load_lvis(synth["train"])
    ref_ds, ref_sampler = build_train_data(cfg, data, data.category_stats().category_map)
    store = serialize_lvis(load_lvis(synth["train"]))
    ds, sampler = build_train_data(cfg, store, store.category_stats().category_map)
    assert np.array_equal(sampler.repeat_factors, ref_sampler.repeat_factors)
    ref_sampler.set_epoch(1), sampler.set_epoch(1)
    keys = list(sampler)
    assert keys == list(ref_sampler) and len(keys) >= 12
    for key in keys:
        (img_a, tgt_a), (img_b, tgt_b) = ref_ds[key], ds[key]
        assert torch.equal(img_a, img_b) and tgt_a.keys() == tgt_b.keys()
        for k in tgt_a:
            a, b = tgt_a[k], tgt_b[k]
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, k


def test_train_data_hands_the_loop_a_store(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("LVISCTL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(None, [f"data.train={synth['train']}"])
    data = build_engine_data(cfg, RunDir(tmp_path / "run"), type("Info", (), {"rank": 0, "world_size": 1})())
    assert isinstance(data.dataset.lvis, LvisStore)
    assert not (tmp_path / "cache").exists()  # a small file is not worth a cache entry


class _FreezeCount(torch.utils.data.Dataset):
    """Each sample is the number of objects the worker's garbage collector leaves alone."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key):
        import gc

        return torch.tensor(gc.get_freeze_count())


def test_train_workers_freeze_what_they_inherit():
    from lvisctl.data.samplers import PlainSampler
    from lvisctl.data.train_data import TrainData
    from lvisctl.engine.distributed import DistInfo
    from lvisctl.engine.loader import epoch_loader as _epoch_loader

    cfg = load_config(None, ["train.num_workers=1", "train.batch_size=1"])
    sampler = PlainSampler(4, seed=0, rank=0, world_size=1)
    data = TrainData(_FreezeCount(), sampler, lambda batch: batch[0], None)
    counts = [int(c) for c in _epoch_loader(data, cfg, DistInfo(), 0, 0)]
    assert len(counts) == 4 and min(counts) > 1000  # the parent's objects, frozen in the worker


_MAPPED = """
import ctypes, sys
from lvisctl.data.dataset import init_train_worker
libc = ctypes.CDLL("libc.so.6")
fields = [(f, ctypes.c_size_t) for f in "abcdefghij"]  # struct mallinfo2: 10 size_t
libc.mallinfo2.restype = type("M", (ctypes.Structure,), {"_fields_": fields})
freed = bytearray(8 << 20)  # mapped; freeing it raises glibc's dynamic threshold to 8 MiB
del freed
if sys.argv[1] == "init":
    init_train_worker(0)
before = libc.mallinfo2().d  # hblks: blocks glibc holds as mmaps
kept = bytearray(2 << 20)
print(libc.mallinfo2().d - before)
"""


@pytest.mark.parametrize(("setup", "mapped"), [("plain", "0"), ("init", "1")])
def test_train_worker_init_maps_large_buffers(setup, mapped):
    # a fresh interpreter: its heap has no free 2 MiB block, so only the threshold decides
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", _MAPPED, setup], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == mapped
