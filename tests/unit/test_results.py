import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.inference.results import (
    detections_to_records,
    encode_masks,
    read_split_results,
    split_paths,
    split_record,
    write_results,
    write_split_results,
    xyxy_to_xywh,
)


def test_encode_masks_compressed_rle_by_hand():
    # 2x3 mask, middle column set. Column-major runs: 2 zeros, 2 ones, 2 zeros -> counts [2, 2, 2],
    # and each small count is one character chr(48 + count) in the compressed string.
    mask = torch.zeros((1, 2, 3), dtype=torch.bool)
    mask[0, :, 1] = True
    assert encode_masks(mask) == [{"size": [2, 3], "counts": "222"}]


def test_encode_masks_roundtrip_several():
    masks = torch.rand((3, 7, 5), generator=torch.Generator().manual_seed(0)) > 0.5
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), masks.numpy().astype(np.uint8))
    assert encode_masks(torch.zeros((0, 4, 4), dtype=torch.bool)) == []


def test_xyxy_to_xywh():
    assert xyxy_to_xywh(torch.tensor([[10.0, 20.0, 30.0, 60.0]])).tolist() == [[10.0, 20.0, 20.0, 40.0]]


def test_records_map_labels_to_lvis_ids():
    cmap = CategoryMap([42, 3, 7])  # contiguous 1 -> 3, 2 -> 7, 3 -> 42
    masks = torch.zeros((2, 4, 6), dtype=torch.bool)
    masks[0, 1:3, 0:5] = True  # 10 pixels
    masks[1, 0, 0] = True
    dets = {
        "boxes": torch.tensor([[0.0, 1.0, 5.0, 3.0], [0.123, 0.0, 6.0, 4.0]]),
        "scores": torch.tensor([0.75, 0.5]),
        "labels": torch.tensor([2, 3]),
        "masks": masks,
    }
    records = detections_to_records(17, dets, cmap)
    assert [r["category_id"] for r in records] == [7, 42]
    assert [r["image_id"] for r in records] == [17, 17]
    assert records[0]["bbox"] == [0.0, 1.0, 5.0, 2.0]
    assert records[1]["bbox"] == [0.12, 0.0, 5.88, 4.0]  # 2 decimals
    assert [r["score"] for r in records] == [0.75, 0.5]
    assert set(records[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    decoded = mask_utils.decode({"size": [4, 6], "counts": records[0]["segmentation"]["counts"].encode()})
    assert decoded.sum() == 10 and decoded[1:3, 0:5].all()


def test_records_empty_image():
    empty = {
        "boxes": torch.zeros((0, 4)),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros((0, 5, 5), dtype=torch.bool),
    }
    assert detections_to_records(1, empty, CategoryMap([1])) == []


def test_unknown_label_is_a_bug_not_silently_dropped():
    dets = {
        "boxes": torch.zeros((1, 4)),
        "scores": torch.ones(1),
        "labels": torch.tensor([5]),
        "masks": torch.zeros((1, 2, 2), dtype=torch.bool),
    }
    with pytest.raises(IndexError):
        detections_to_records(1, dets, CategoryMap([1, 2]))


def test_write_results_streams_a_generator_atomically(tmp_path):
    records = [{"image_id": i, "score": i / 10} for i in range(3)]
    out = write_results((r for r in records), tmp_path / "sub" / "res.json")
    assert json.loads(out.read_text()) == records
    assert [p.name for p in out.parent.iterdir()] == ["res.json"]  # no temp file left behind
    write_results(iter(()), tmp_path / "empty.json")
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_write_results_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "res.json"
    write_results([{"a": 1}], path)

    def broken():
        yield {"a": 2}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_results(broken(), path)
    assert json.loads(path.read_text()) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["res.json"]


def full_record(i: int) -> dict:
    return {
        "image_id": i,
        "category_id": 3,
        "bbox": [1.0, 2.0, 3.0, 4.0],
        "score": i / 10,
        "segmentation": {"size": [2, 3], "counts": "222"},
    }


def test_split_paths_and_records():
    paths = split_paths("run/predictions/val_s800.json")
    assert {t: str(p) for t, p in paths.items()} == {
        "segm": "run/predictions/val_s800.segm.json",
        "bbox": "run/predictions/val_s800.bbox.json",
    }
    rec = full_record(1)
    assert list(split_record(rec, "segm")) == ["image_id", "category_id", "score", "segmentation"]
    assert list(split_record(rec, "bbox")) == ["image_id", "category_id", "bbox", "score"]
    assert "bbox" in rec and "segmentation" in rec  # the input is not modified


def test_write_split_results_streams_both_files(tmp_path):
    records = [full_record(i) for i in range(3)]
    paths = write_split_results((r for r in records), tmp_path / "val.json")
    segm = json.loads(paths["segm"].read_text())
    bbox = json.loads(paths["bbox"].read_text())
    assert segm == [split_record(r, "segm") for r in records]
    assert bbox == [split_record(r, "bbox") for r in records]
    assert paths["segm"].read_text().startswith('[{"image_id":0,"category_id":3,"score":0.0,"segmentation"')
    assert read_split_results(tmp_path / "val.json") == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val.bbox.json", "val.segm.json"]


def test_write_split_results_failure_writes_neither(tmp_path):
    def broken():
        yield full_record(0)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_split_results(broken(), tmp_path / "val.json")
    assert list(tmp_path.iterdir()) == []


def ms_detections() -> dict:
    masks = torch.zeros((2, 4, 6), dtype=torch.bool)
    masks[0, 1:3, 0:5] = True
    masks[1, 0, 0] = True
    return {
        "boxes": torch.tensor([[0.0, 1.0, 5.0, 3.0], [0.0, 0.0, 1.0, 1.0]]),
        "scores": torch.tensor([0.75, 0.5]),  # classification scores
        "labels": torch.tensor([1, 2]),
        "masks": masks,
        "mask_scores": torch.tensor([0.625, 0.125]),  # cls score x predicted mask IoU
    }


def test_mask_scoring_rescores_only_the_segm_file(tmp_path):
    records = detections_to_records(3, ms_detections(), CategoryMap([1, 2]))
    assert [r["score"] for r in records] == [0.75, 0.5]
    assert [r["mask_score"] for r in records] == [0.625, 0.125]
    paths = write_split_results(records, tmp_path / "val.json")
    segm = json.loads(paths["segm"].read_text())
    bbox = json.loads(paths["bbox"].read_text())
    assert [r["score"] for r in segm] == [0.625, 0.125]
    assert [r["score"] for r in bbox] == [0.75, 0.5]
    assert all("mask_score" not in r for r in segm + bbox)  # the LVIS results format only
    assert read_split_results(tmp_path / "val.json") == records


def test_without_mask_scoring_both_files_keep_the_cls_score(tmp_path):
    dets = ms_detections()
    del dets["mask_scores"]
    records = detections_to_records(3, dets, CategoryMap([1, 2]))
    assert all("mask_score" not in r for r in records)
    paths = write_split_results(records, tmp_path / "val.json")
    for p in paths.values():
        assert [r["score"] for r in json.loads(p.read_text())] == [0.75, 0.5]


def test_roi_mask_probs_take_the_fast_path_with_the_same_rles():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 1, 28, 28, generator=g)
    boxes = torch.tensor([[1.0, 2.0, 20.0, 30.0], [0.0, 0.0, 39.0, 29.0], [5.5, 6.5, 9.0, 9.0]] * 2)[:5]
    base = {"boxes": boxes, "scores": torch.linspace(1, 0.5, 5), "labels": torch.ones(5, dtype=torch.int64)}
    pasted = paste_masks_in_image(probs, boxes, (30, 40), padding=1) > 0.5
    slow = detections_to_records(1, {**base, "masks": pasted}, CategoryMap([7]))
    fast = detections_to_records(1, {**base, "mask_probs": probs, "image_size": (30, 40)}, CategoryMap([7]))
    assert fast == slow
