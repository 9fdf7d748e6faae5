"""Self-training data (paper 2.1): extra images per epoch, pseudo-label files, ignore boxes, loss weight."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from lvisctl.config import load_config
from lvisctl.data.categories import CategoryMap
from lvisctl.data.dataset import ConcatTrainDataset, LvisTrainDataset, build_train_data
from lvisctl.data.samplers import ExtraImagesSampler, PlainSampler, RepeatFactorSampler
from lvisctl.data.self_training import (
    load_extra_images,
    load_missing_annotations,
    load_self_training,
    resolve_pseudo_labels,
)
from lvisctl.data.transforms.base import make_boxes
from lvisctl.data.transforms.rotate import rotate_sample
from lvisctl.data.transforms.scale_jitter import resize_sample
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir, atomic_write_bytes, atomic_write_json


# ------------------------------------------------------------------------------------------ sampler
def _mixed(num_base=4, num_extra=6, per_epoch=3, **kw):
    return ExtraImagesSampler(PlainSampler(num_base, seed=5, **kw), num_extra, per_epoch)


def test_each_epoch_has_every_base_image_and_per_epoch_distinct_extras():
    s = _mixed()  # indices 0..3 are LVIS, 4..9 extra; 3 extras per epoch
    assert s.num_images == 10 and s.per_epoch == 3
    for epoch in range(6):
        s.set_epoch(epoch)
        got = [i for i, e, _ in s]
        assert len(got) == len(s) == 4 + 3
        counts = Counter(got)
        assert all(counts[i] == 1 for i in range(4))
        extras = sorted(i for i in got if i >= 4)
        assert len(set(extras)) == 3 and set(extras) <= set(range(4, 10))  # without replacement
        assert extras == s.extra_indices(epoch).tolist()
        assert [p for _, _, p in s] == list(range(7))


def test_fewer_extra_images_than_per_epoch_means_all_of_them():
    s = _mixed(num_base=2, num_extra=3, per_epoch=10000)
    assert s.per_epoch == 3
    for epoch in range(3):
        s.set_epoch(epoch)
        assert sorted(i for i, _, _ in s) == [0, 1, 2, 3, 4]


def test_extra_draw_is_uniform_over_epochs_and_varies():
    # 3 of 6 per epoch: each extra image is in an epoch with probability 1/2 -> 200 of 400 epochs
    # (binomial sd 10; 160..240 is 4 sd).
    s = _mixed()
    seen = Counter()
    draws = set()
    for epoch in range(400):
        extra = tuple(s.extra_indices(epoch).tolist())
        draws.add(extra)
        seen.update(extra)
    assert sorted(seen) == [4, 5, 6, 7, 8, 9]
    assert all(160 <= seen[i] <= 240 for i in seen), seen
    assert len(draws) == 20  # all C(6, 3) = 20 subsets occur


def test_deterministic_by_seed_and_epoch_and_independent_of_history():
    a, b = _mixed(), _mixed()
    a.set_epoch(3)
    for e in (0, 1, 2, 3):  # b visits other epochs first: no effect on epoch 3
        b.set_epoch(e)
        list(b)
    assert list(a) == list(b)
    other = ExtraImagesSampler(PlainSampler(4, seed=6), 6, 3)
    assert any(
        not np.array_equal(other.epoch_indices(e), a.epoch_indices(e)) for e in range(4)
    )  # another seed, another list


def test_base_rfs_counts_are_kept():
    # integer repeat factors: image 0 twice, 1 once, 2 three times, in every epoch, plus 2 of 5 extras
    s = ExtraImagesSampler(RepeatFactorSampler([2.0, 1.0, 3.0], seed=0), 5, 2)
    for epoch in range(4):
        s.set_epoch(epoch)
        counts = Counter(i for i, _, _ in s)
        assert [counts[i] for i in range(3)] == [2, 1, 3]
        assert sum(counts[i] for i in range(3, 8)) == 2 and all(counts[i] <= 1 for i in range(3, 8))
    # fractional factors: the base part is exactly the base sampler's own list for that epoch
    base = RepeatFactorSampler([1.5, 1.0, 2.25], seed=7)
    mixed = ExtraImagesSampler(RepeatFactorSampler([1.5, 1.0, 2.25], seed=7), 4, 2)
    for epoch in range(5):
        want = Counter(base.epoch_indices(epoch).tolist())
        got = Counter(i for i in mixed.epoch_indices(epoch).tolist() if i < 3)
        assert got == want


def test_without_shuffle_base_list_then_sorted_extras():
    s = ExtraImagesSampler(PlainSampler(3, seed=0, shuffle=False), 4, 2)
    got = s.epoch_indices(0).tolist()
    assert got[:3] == [0, 1, 2] and got[3:] == s.extra_indices(0).tolist() and got[3] < got[4]


def test_zero_per_epoch_is_the_base_sampler_alone():
    s = _mixed(per_epoch=0)
    assert sorted(s.epoch_indices(2).tolist()) == [0, 1, 2, 3]


def test_rank_shards_are_disjoint_and_cover_the_epoch():
    # 4 + 3 = 7 samples over 3 ranks: padded to 9, each rank 3 positions r, r + 3, r + 6
    shards = [_mixed(rank=r, world_size=3) for r in range(3)]
    full = _mixed().epoch_indices(1)
    positions = []
    for r, s in enumerate(shards):
        s.set_epoch(1)
        items = list(s)
        assert len(items) == 3
        assert [p for _, _, p in items] == [r, r + 3, r + 6]
        assert [i for i, _, p in items] == [int(full[p % 7]) for _, _, p in items]
        positions += [p for _, _, p in items]
    assert sorted(positions) == list(range(9))


def test_mid_epoch_start_and_state_dict_resume_exactly():
    s = _mixed()
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]
    state = s.state_dict(consumed=5)
    assert state["base_kind"] == "PlainSampler" and state["per_epoch"] == 3 and state["num_extra"] == 6
    fresh = _mixed()
    fresh.load_state_dict(state)
    assert list(fresh) == full[5:]
    with pytest.raises(LvisctlError, match="per_epoch is 3 but this run has 2"):
        _mixed(per_epoch=2).load_state_dict(state)
    with pytest.raises(LvisctlError, match="kind is 'ExtraImagesSampler'"):
        PlainSampler(10, seed=5).load_state_dict(state)


# ------------------------------------------------------------------------------------------ files
def _write(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload))
    return path


def _missing_file(tmp_path, anns, source="missing"):
    return _write(
        tmp_path / "missing.json",
        {"info": {"pseudo_label_source": source}, "images": [], "annotations": anns, "categories": []},
    )


def test_missing_annotations_become_xyxy_ignore_boxes(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 5, 8], "score": 0.9},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0.5, 1.5, 2, 2], "score": 0.8},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [4, 4, 4, 4], "score": 0.7},
        {"id": 4, "image_id": 99, "category_id": 3, "bbox": [1, 1, 1, 1], "score": 0.7},  # not in train
    ]
    path = _missing_file(tmp_path, anns)
    got = load_missing_annotations(path, train_image_ids={1, 2, 3})
    assert got == {1: [[10.0, 20.0, 15.0, 28.0], [0.5, 1.5, 2.5, 3.5]], 2: [[4.0, 4.0, 8.0, 8.0]]}
    assert 99 in load_missing_annotations(path)  # no training set given: everything
    with pytest.raises(LvisctlError, match="none of the 3 images with pseudo labels is in the training"):
        load_missing_annotations(path, train_image_ids={50})


def test_missing_file_problems_are_collected_in_one_line(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 0, 8]},
        {"id": 2, "image_id": "x", "category_id": 3, "bbox": [1, 1, 1, 1]},
        {"id": 3, "image_id": 1, "category_id": 3},
    ]
    with pytest.raises(LvisctlError) as err:
        load_missing_annotations(_missing_file(tmp_path, anns, source="unlabeled"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "missing.json"))
    assert (
        "4 problems" in msg
        and "made with --mode unlabeled, but data.pseudo_labels needs --mode missing" in msg
    )
    assert "annotation 3: needs image_id, category_id, bbox" in msg
    assert "annotation 1: degenerate bbox" in msg and "annotation 2: image_id and category_id" in msg


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def _rect_mask(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


@pytest.fixture
def extra_file(tmp_path):
    """3 extra images (32x40) with RLE pseudo labels: image 101 two (cat 3, unknown cat 99), image 102 one
    of cat 99 only (dropped with it), image 103 one of cat 7."""
    root = tmp_path / "extra"
    (root / "openimages").mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = []
    for image_id in (101, 102, 103):
        name = f"openimages/{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(root / name)
        images.append({"id": image_id, "width": 40, "height": 32, "file_name": name})
    anns = [
        (101, 3, (4, 5, 14, 20)),
        (101, 99, (20, 2, 30, 8)),
        (102, 99, (1, 1, 9, 9)),
        (103, 7, (10, 10, 38, 30)),
    ]
    annotations = [
        {
            "id": k + 1,
            "image_id": i,
            "category_id": c,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": 0.9,
            "segmentation": _rle(_rect_mask(32, 40, x1, y1, x2, y2)),
        }
        for k, (i, c, (x1, y1, x2, y2)) in enumerate(anns)
    ]
    payload = {"info": {"pseudo_label_source": "unlabeled"}, "images": images, "annotations": annotations}
    return _write(root / "pseudo_unlabeled.json", payload)


def test_extra_images_load_with_masks_from_rle(extra_file):
    data = load_extra_images(extra_file)
    assert data.image_root == extra_file.parent and sorted(data.images) == [101, 102, 103]
    cmap = CategoryMap({3: {}, 7: {}, 11: {}})  # the LVIS training categories: 99 is unknown
    ds = LvisTrainDataset(data, cmap, None, loss_weight=0.25)
    assert ds.image_ids == [101, 103]  # 102 has only an unknown-category label
    s = ds.load(0)
    assert s["labels"].tolist() == [1]
    assert s["boxes"].tolist() == [[4.0, 5.0, 14.0, 20.0]]
    assert torch.equal(s["masks"][0], torch.from_numpy(_rect_mask(32, 40, 4, 5, 14, 20)))
    image, target = ds[1]
    assert target["labels"].tolist() == [2] and target["loss_weight"] == 0.25
    assert target["ignore_boxes"].shape == (0, 4) and image.shape == (3, 32, 40)


def test_extra_file_problems(tmp_path):
    payload = {
        "images": [
            {"id": 1, "width": 40, "height": 32},
            {"id": 2, "width": 40, "height": 32, "file_name": "a"},
        ],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]},
            {
                "id": 2,
                "image_id": 2,
                "category_id": 1,
                "bbox": [1, 1, 2, 2],
                "segmentation": _rle(np.zeros((16, 16), np.uint8)),
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 1,
                "bbox": [1, 1, 2, 2],
                "segmentation": [[1, 1, 5, 1, 5, 5]],
            },
        ],
    }
    with pytest.raises(LvisctlError) as err:
        load_extra_images(_write(tmp_path / "x.json", payload))
    msg = str(err.value)
    assert "4 problems" in msg and "image 1: needs coco_url or file_name" in msg
    assert "annotation 1: needs image_id, category_id, bbox, segmentation" in msg
    assert "annotation 2: RLE size [16, 16] != image size" in msg
    assert "annotation 3: image_id 7 is not in 'images'" in msg
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(LvisctlError, match="x.json: not valid json"):
        load_extra_images(tmp_path / "x.json")


# ------------------------------------------------------------------------------------------ resolving
def _register(run: RunDir, rel: str, mode: str, **meta) -> Path:
    path = atomic_write_json(
        run.output_path(rel), {"images": [], "annotations": [], "info": {"pseudo_label_source": mode}}
    )
    run.register("pseudo-labels", path, meta={"mode": mode, **meta})
    return path


def test_latest_and_explicit_paths(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = {"pseudo_labels": "", "extra_images": "latest"}
    with pytest.raises(LvisctlError, match="data.extra_images=latest but no pseudo-labels of mode unlabeled"):
        resolve_pseudo_labels(run, cfg, "extra_images")
    assert resolve_pseudo_labels(run, cfg, "pseudo_labels") is None
    _register(run, "pl/a_unlabeled.json", "unlabeled", images="/data/oi/info.json")
    _register(run, "pl/b_unlabeled.json", "unlabeled", images="/data/oi2/info.json")
    missing = _register(run, "pl/c_missing.json", "missing")
    newest = resolve_pseudo_labels(run, cfg, "extra_images")
    assert newest.path == "pl/b_unlabeled.json"
    assert (
        resolve_pseudo_labels(run, {"pseudo_labels": "latest"}, "pseudo_labels").path == "pl/c_missing.json"
    )
    # explicit paths: must exist, and a registered file must be of the right mode
    assert resolve_pseudo_labels(run, {"pseudo_labels": str(missing)}, "pseudo_labels") == missing
    with pytest.raises(
        LvisctlError, match="recorded as pseudo labels of mode missing, but data.extra_images"
    ):
        resolve_pseudo_labels(run, {"extra_images": str(missing)}, "extra_images")
    with pytest.raises(LvisctlError, match=r"nope.json: pseudo-label file \(data.pseudo_labels\) not found"):
        resolve_pseudo_labels(run, {"pseudo_labels": str(tmp_path / "nope.json")}, "pseudo_labels")
    # a file edited after it was recorded is refused
    (run.root / "pl/b_unlabeled.json").write_text("{}")
    with pytest.raises(LvisctlError, match="sha256 no longer matches"):
        resolve_pseudo_labels(run, cfg, "extra_images")


def test_load_self_training_records_inputs_and_default_image_root(tmp_path, extra_file):
    run = RunDir(tmp_path / "run")
    rel = "pseudo_labels/extra_unlabeled.json"
    atomic_write_bytes(run.output_path(rel), extra_file.read_bytes())
    # made from an image-info json in extra_file's folder: that folder is where the images are
    run.register("pseudo-labels", run.path_of(rel), meta={"mode": "unlabeled", "images": str(extra_file)})
    missing = _missing_file(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}])
    cfg = {"pseudo_labels": str(missing), "extra_images": "latest", "extra_image_root": ""}
    st = load_self_training(cfg, run, train_image_ids={1, 2})
    assert st.ignore_boxes == {1: [[1.0, 2.0, 4.0, 6.0]]}
    assert st.extra_data.image_root == extra_file.parent
    assert st.extra_data.image_path(101).is_file()
    assert st.inputs[0] == missing and st.inputs[1].path == rel
    st = load_self_training({**cfg, "extra_image_root": "/elsewhere"}, run, train_image_ids={1})
    assert st.extra_data.image_root == Path("/elsewhere")
    # the pseudolabel run's --image-root, when recorded, wins over the image-info json's folder
    run.register(
        "pseudo-labels",
        run.path_of(rel),
        meta={"mode": "unlabeled", "images": "/a/b.json", "image_root": "/c"},
    )
    assert load_self_training(cfg, run, train_image_ids={1}).extra_data.image_root == Path("/c")
    # an unregistered file: its own folder
    assert (
        load_self_training(
            {**cfg, "extra_images": str(extra_file)}, run, train_image_ids={1}
        ).extra_data.image_root
        == extra_file.parent
    )
    empty = load_self_training({"pseudo_labels": "", "extra_images": ""}, run, train_image_ids={1})
    assert empty.ignore_boxes is None and empty.extra_data is None and empty.inputs == []


# ------------------------------------------------------------------------------------------ dataset
@dataclass
class FakeLvis:
    root: Path
    images: dict
    categories: dict
    anns_by_image: dict
    path: Path = Path("lvis_train.json")

    def image_path(self, image_id: int) -> Path:
        return self.root / self.images[image_id]["file_name"]


@pytest.fixture
def lvis(tmp_path):
    rng = np.random.default_rng(0)
    images, anns = {}, {}
    for image_id in (1, 2, 3):
        name = f"lvis{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(tmp_path / name)
        images[image_id] = {"id": image_id, "height": 32, "width": 40, "file_name": name}
        poly = [[2.0, 2.0, 20.0, 2.0, 20.0, 20.0, 2.0, 20.0]]
        anns[image_id] = [{"id": image_id, "category_id": 3 if image_id < 3 else 11, "segmentation": poly}]
    cats = {c: {"id": c, "name": f"c{c}", "frequency": "f"} for c in (3, 7, 11)}
    return FakeLvis(tmp_path, images, cats, anns)


def test_concat_dataset_routes_indices_to_parts(lvis, extra_file):
    cmap = CategoryMap(lvis.categories)
    a = LvisTrainDataset(lvis, cmap, None, ignore_boxes={2: [[1, 2, 3, 4]]})
    b = LvisTrainDataset(load_extra_images(extra_file), cmap, None, loss_weight=0.5)
    ds = ConcatTrainDataset([a, b])
    assert len(ds) == 5 and ds.offsets.tolist() == [0, 3, 5]
    assert [ds.locate(i) for i in range(5)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    with pytest.raises(IndexError):
        ds.locate(5)
    _, t = ds[(1, 0, 7)]
    assert t["image_id"] == 2 and t["loss_weight"] == 1.0 and t["ignore_boxes"].tolist() == [[1, 2, 3, 4]]
    _, t = ds[(4, 0, 8)]
    assert t["image_id"] == 103 and t["loss_weight"] == 0.5 and t["labels"].tolist() == [2]


def _cfg(**items):
    base = {
        "augment.train_scales": [32],
        "augment.max_size": 64,
        "augment.mosaic.size": 48,
        "augment.mosaic.prob": 0.5,
        "sampler.rfs_threshold": 0.5,
        "data.extra_loss_weight": 0.25,
        "data.extra_per_epoch": 1,
    }
    base.update(items)
    return load_config(None, [f"{k}={v}".replace(" ", "") for k, v in base.items()])


def test_build_train_data_mixes_extra_images_with_loss_weight(lvis, extra_file):
    cmap = CategoryMap(lvis.categories)
    extra = load_extra_images(extra_file)
    ds, sampler = build_train_data(
        _cfg(), lvis, cmap, ignore_boxes={1: [[0, 0, 10, 10]]}, extra_data=extra, rank=0, world_size=1
    )
    assert isinstance(ds, ConcatTrainDataset) and isinstance(sampler, ExtraImagesSampler)
    assert isinstance(sampler.base, RepeatFactorSampler) and sampler.num_base == 3 and sampler.num_extra == 2
    assert ds.parts[1].transforms.transforms[0].weights is None  # extra images: uniform Mosaic partners
    for epoch in range(3):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert sum(i >= sampler.num_base for i, _, _ in keys) == 1
        for key in keys:
            image, target = ds[key]
            extra_sample = key[0] >= 3
            assert target["loss_weight"] == (0.25 if extra_sample else 1.0)
            assert image.shape[-2:] in {(32, 40), (32, 32)}  # short side 32 (a 48x48 mosaic -> 32x32)
            assert target["ignore_boxes"].shape[1] == 4
            if extra_sample:
                assert target["image_id"] in (101, 103) and target["ignore_boxes"].numel() == 0
    with pytest.raises(LvisctlError, match="data.extra_per_epoch .* must be >= 0"):
        build_train_data(_cfg(**{"data.extra_per_epoch": -1}), lvis, cmap, extra_data=extra)


def test_extra_file_without_training_categories_is_refused(lvis, extra_file):
    extra = load_extra_images(extra_file)
    with pytest.raises(LvisctlError, match="no pseudo label of a training category"):
        build_train_data(_cfg(), lvis, CategoryMap({11: {}}), extra_data=extra)


# ------------------------------------------------------------------------------------------ transforms
def _sample_with_ignore(h=32, w=40):
    return {
        "image": torch.zeros((3, h, w), dtype=torch.uint8),
        "masks": torch.zeros((0, h, w), dtype=torch.uint8),
        "boxes": make_boxes(torch.zeros((0, 4)), h, w),
        "labels": torch.zeros(0, dtype=torch.int64),
        "ignore_boxes": make_boxes(torch.tensor([[0.0, 0.0, 5.0, 6.0], [10.0, 8.0, 20.0, 16.0]]), h, w),
        "neg_labels": torch.zeros(0, dtype=torch.int64),
        "not_exhaustive_labels": torch.zeros(0, dtype=torch.int64),
        "image_id": 1,
        "loss_weight": 1.0,
    }


def test_ignore_boxes_follow_rotation_and_resize():
    # 180 degrees about the centre (20, 16) of a 40x32 image: x -> 40 - x, y -> 32 - y
    out = rotate_sample(_sample_with_ignore(), 180.0)
    assert torch.allclose(
        out["ignore_boxes"].as_subclass(torch.Tensor),
        torch.tensor([[35.0, 26.0, 40.0, 32.0], [20.0, 16.0, 30.0, 24.0]]),
        atol=1e-4,
    )
    # resize 40x32 -> 80x48: x doubles, y grows by 1.5
    out = resize_sample(_sample_with_ignore(), (48, 80))
    assert out["ignore_boxes"].tolist() == [[0.0, 0.0, 10.0, 9.0], [20.0, 12.0, 40.0, 24.0]]


def test_st_config_is_the_best_table1_row_plus_extra_images():
    from lvisctl.config import CONFIG_ROOT

    st = load_config(CONFIG_ROOT / "stage1" / "s101_da_eql_rfs_tricks_st.yaml")
    best = load_config(CONFIG_ROOT / "stage1" / "s101_da_eql_rfs_tricks.yaml")
    assert (st.data.extra_images, st.data.extra_per_epoch, st.data.extra_loss_weight) == (
        "latest",
        10000,
        0.5,
    )
    assert st.data.pseudo_labels == ""  # LVIS ignore regions belong to Table 2's dagger row, not "ST"
    for section in ("model", "augment", "sampler", "solver"):
        assert st[section] == best[section]


def test_summary_lines_and_resolved_config(tmp_path, extra_file, capsys):
    run = RunDir(tmp_path / "run")
    rel = "pseudo_labels/extra_unlabeled.json"
    atomic_write_bytes(run.output_path(rel), extra_file.read_bytes())
    run.register("pseudo-labels", run.path_of(rel), meta={"mode": "unlabeled", "images": str(extra_file)})
    missing = _missing_file(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 3, 4]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1, 2, 3, 4]},
            {"id": 4, "image_id": 9, "category_id": 3, "bbox": [1, 2, 3, 4]},  # not a training image
        ],
    )
    data_cfg = {"pseudo_labels": str(missing), "extra_images": "latest", "extra_image_root": ""}
    st = load_self_training(data_cfg, run, train_image_ids={1, 2})
    extra_path = str((run.root / rel).resolve())
    assert st.summary_lines() == [
        f"self-training: data.pseudo_labels = {missing.resolve()}: 3 ignore boxes on 2 training images",
        f"self-training: data.extra_images = {extra_path}: 3 extra images with 4 pseudo labels "
        f"(images under {extra_file.parent})",
    ]
    assert capsys.readouterr().out.splitlines() == st.summary_lines()  # printed by rank 0
    assert data_cfg["extra_images"] == "latest"  # the caller's config is left alone
    full = {"seed": 1, "data": dict(data_cfg)}
    assert st.resolved_config(full) == {
        "seed": 1,
        "data": {"pseudo_labels": str(missing), "extra_images": extra_path, "extra_image_root": ""},
    }
    assert full["data"]["extra_images"] == "latest"
    assert (
        load_self_training(
            {"pseudo_labels": "", "extra_images": ""}, run, train_image_ids={1}
        ).summary_lines()
        == []
    )


def test_pseudo_labels_made_on_another_annotation_file_are_refused(tmp_path):
    """Issue 22 item 11: labels of another dataset sharing image ids were put on unrelated images."""
    from lvisctl.data.self_training import load_missing_annotations, provenance_of
    from lvisctl.inference.pseudo_labels import Selector, write_pseudo_labels

    made_on = tmp_path / "other_train.json"
    made_on.write_text('{"images": [], "annotations": [], "categories": [], "which": "other"}')
    ours = tmp_path / "train.json"
    ours.write_text('{"images": [], "annotations": [], "categories": [], "which": "ours"}')
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    images = {1: {"id": 1, "width": 10, "height": 10}}
    cats = [{"id": 3, "name": "c3", "frequency": "f"}]
    preds = [{"image_id": 1, "category_id": 3, "bbox": [5, 5, 3, 3], "score": 0.9}]
    selector = Selector("missing", 0.5, images, {1: [[0, 0, 2, 2]]})
    labels = tmp_path / "labels.json"
    write_pseudo_labels(labels, iter(preds), selector, cats, provenance=provenance_of(made_on, ckpt))
    info = json.loads(labels.read_text())["info"]
    assert info["source_annotations"] == str(made_on) and len(info["source_annotations_sha256"]) == 64
    assert len(info["checkpoint_sha256"]) == 64

    with pytest.raises(LvisctlError, match="made on .*other_train.json .* but data.train is .*train.json"):
        load_missing_annotations(labels, train_image_ids={1}, train_annotations=ours)
    assert load_missing_annotations(labels, train_image_ids={1}, train_annotations=made_on) == {
        1: [[5.0, 5.0, 8.0, 8.0]]
    }
    del info["source_annotations_sha256"]  # a file that records nothing (older, hand-made) is taken
    payload = json.loads(labels.read_text())
    payload["info"] = info
    labels.write_text(json.dumps(payload))
    assert load_missing_annotations(labels, train_image_ids={1}, train_annotations=ours)
