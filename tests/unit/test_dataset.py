"""LvisTrainDataset on a tiny LVIS-format fixture: decoding, the target contract, seeding, collate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lvisctl.config import load_config
from lvisctl.data.categories import CategoryMap
from lvisctl.data.dataset import LvisTrainDataset, build_train_data, collate_detection
from lvisctl.data.samplers import RepeatFactorSampler
from lvisctl.data.transforms import tight_boxes
from lvisctl.errors import LvisctlError


@dataclass
class FakeLvis:
    """The duck-typed part of ``LvisData`` the dataset uses."""

    root: Path
    images: dict
    categories: dict
    anns_by_image: dict

    def image_path(self, image_id: int) -> Path:
        return self.root / self.images[image_id]["file_name"]


def rect(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


@pytest.fixture
def lvis(tmp_path) -> FakeLvis:
    # Sparse category ids 3, 7, 11 -> contiguous 1, 2, 3; id 99 is not in the category map.
    sizes = {1: (48, 64), 2: (64, 48), 3: (48, 64), 4: (40, 40), 5: (40, 40)}
    images = {}
    rng = np.random.default_rng(0)
    for image_id, (h, w) in sizes.items():
        name = f"img{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
        images[image_id] = {"id": image_id, "height": h, "width": w, "file_name": name}
    images[1].update(neg_category_ids=[11, 99], not_exhaustive_category_ids=[7])
    anns = {
        1: [
            {"id": 1, "category_id": 3, "segmentation": rect(10, 10, 20, 20), "bbox": [10, 10, 10, 10]},
            {"id": 2, "category_id": 7, "segmentation": rect(30, 5, 60, 40), "bbox": [30, 5, 30, 35]},
            {"id": 3, "category_id": 99, "segmentation": rect(0, 0, 5, 5), "bbox": [0, 0, 5, 5]},
            {"id": 4, "category_id": 3, "segmentation": [[1, 1, 2, 2]], "bbox": [1, 1, 1, 1]},  # degenerate
        ],
        2: [{"id": 5, "category_id": 3, "segmentation": rect(4, 4, 40, 60), "bbox": [4, 4, 36, 56]}],
        3: [{"id": 6, "category_id": 11, "segmentation": rect(2, 2, 62, 46), "bbox": [2, 2, 60, 44]}],
        4: [{"id": 7, "category_id": 3, "segmentation": rect(5, 5, 35, 35), "bbox": [5, 5, 30, 30]}],
        5: [],  # no annotation: filtered out
    }
    cats = {c: {"id": c, "name": f"cat{c}", "frequency": "r"} for c in (3, 7, 11)}
    return FakeLvis(tmp_path, images, cats, anns)


def test_load_decodes_masks_and_maps_labels(lvis):
    ds = LvisTrainDataset(lvis, CategoryMap(lvis.categories), None)
    assert ds.image_ids == [1, 2, 3, 4]
    s = ds.load(0)
    assert s["image"].shape == (3, 48, 64) and s["image"].dtype == torch.uint8
    # id 99 unmapped, the degenerate polygon decodes to nothing: two instances remain.
    assert s["labels"].tolist() == [1, 2]
    assert s["masks"].shape == (2, 48, 64)
    assert s["masks"][0].sum() == 100 and s["masks"][1].sum() == 30 * 35
    assert s["boxes"].tolist() == [[10.0, 10.0, 20.0, 20.0], [30.0, 5.0, 60.0, 40.0]]
    assert s["neg_labels"].tolist() == [3] and s["not_exhaustive_labels"].tolist() == [2]
    assert np.array_equal(
        s["image"].permute(1, 2, 0).numpy(), np.asarray(Image.open(lvis.root / "img1.png").convert("RGB"))
    )


def test_getitem_follows_the_target_contract(lvis):
    ds = LvisTrainDataset(
        lvis, CategoryMap(lvis.categories), None, ignore_boxes={1: [[1, 2, 3, 4]]}, loss_weight=0.5
    )
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 48, 64)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    assert target["labels"].dtype == torch.int64
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, 48, 64)
    assert target["image_id"] == 1 and target["loss_weight"] == 0.5
    assert target["ignore_boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert target["neg_labels"].dtype == torch.int64
    _, t2 = ds[1]
    assert t2["ignore_boxes"].shape == (0, 4) and t2["neg_labels"].shape == (0,)


def test_repeat_factors_from_dataset(lvis):
    # 4 images: class 1 (id 3) in images 1, 2, 4 -> f = 3/4; class 2 (id 7) in image 1 -> 1/4; class 3
    # (id 11) in image 3 -> 1/4. t = 1: r = max(1, sqrt(1/0.75)) = 1.1547 and sqrt(4) = 2.
    ds = LvisTrainDataset(lvis, CategoryMap(lvis.categories), None)
    assert ds.image_label_sets() == [{1, 2}, {1}, {3}, {1}]
    assert np.allclose(ds.repeat_factors(1.0), [2.0, math.sqrt(4 / 3), 2.0, math.sqrt(4 / 3)])
    assert np.allclose(ds.repeat_factors(0.001), [1, 1, 1, 1])


def aug_cfg(*extra):
    return load_config(
        None,
        [
            "augment.train_scales=[32, 48]",
            "augment.max_size=96",
            "augment.mosaic.prob=0.5",
            "augment.mosaic.size=64",
            "augment.rotate.prob=0.5",
            "sampler.rfs_threshold=1.0",
            *extra,
        ],
    )


def test_samples_depend_only_on_the_key(lvis):
    ds, sampler = build_train_data(aug_cfg(), lvis, CategoryMap(lvis.categories))
    assert isinstance(sampler, RepeatFactorSampler)
    assert np.allclose(sampler.repeat_factors, ds.repeat_factors(1.0))
    keys = [(i % 4, 1, p) for p in range(8) for i in (p,)]
    first = [ds[k] for k in keys]
    again = [ds[k] for k in reversed(keys)][::-1]  # other order, as another worker would see them
    for (img_a, tgt_a), (img_b, tgt_b) in zip(first, again, strict=True):
        assert torch.equal(img_a, img_b) and torch.equal(tgt_a["masks"], tgt_b["masks"])
        assert torch.equal(tgt_a["boxes"], tgt_b["boxes"])
        assert torch.equal(tgt_a["boxes"], tight_boxes(tgt_a["masks"]))
        assert min(img_a.shape[-2:]) in (32, 48)
    sizes = {tuple(img.shape) for img, _ in first}
    assert len(sizes) > 1  # different positions draw different augmentations
    assert torch.equal(ds[2][0], ds[(2, 0, 2)][0])


def test_dataloader_workers_do_not_change_samples(lvis):
    ds, sampler = build_train_data(aug_cfg(), lvis, CategoryMap(lvis.categories))
    sampler.set_epoch(1)

    def run(workers):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate_detection
        )
        return [b for b in loader]

    serial, parallel = run(0), run(2)
    assert len(serial) == math.ceil(len(sampler) / 2)
    images, targets = serial[0]
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    for (ia, ta), (ib, tb) in zip(serial, parallel, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ia, ib, strict=True))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(ta, tb, strict=True))


def test_annotation_boxes_without_alignment(lvis):
    ds = LvisTrainDataset(lvis, CategoryMap(lvis.categories), None, box_from_mask=False)
    lvis.anns_by_image[1][0]["bbox"] = [10.2, 10.4, 9.5, 9.1]
    assert torch.allclose(ds.load(0)["boxes"][0], torch.tensor([10.2, 10.4, 19.7, 19.5]))


def test_missing_or_wrong_size_image_is_a_user_error(lvis):
    ds = LvisTrainDataset(lvis, CategoryMap(lvis.categories), None)
    (lvis.root / "img2.png").unlink()
    with pytest.raises(LvisctlError, match="img2.png: image file not found"):
        ds.load(1)
    lvis.images[3]["height"] = 50
    with pytest.raises(LvisctlError, match="img3.png: image is 64x48 but the annotation file says 64x50"):
        ds.load(2)
