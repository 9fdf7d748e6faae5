"""Inference runner safety (issue 9 items 5, 8, 10): bad images, damaged chunks, 16-bit images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lvisctl.errors import LvisctlError
from lvisctl.inference.chunks import ImageItem, finished_chunks
from lvisctl.inference.results import read_split_results
from lvisctl.inference.runner import check_images_up_front
from tests.helpers.inference import files_bytes, infer, make_images


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    items = make_images(tmp_path)
    items[1].path.write_bytes(b"")  # empty
    items[3].path.write_text("not an image")
    summary = infer(items, tmp_path / "out.json", tmp_path / ".partial" / "out")
    assert summary.complete
    assert sorted(summary.skipped) == [101, 103]
    assert "empty file" in summary.skipped[101] and "not an image" in summary.skipped[103]
    records = read_split_results(tmp_path / "out.json")
    assert {r["image_id"] for r in records} == {100, 102, 104}
    assert not (tmp_path / ".partial").exists()


def test_damaged_chunk_is_recomputed(tmp_path):
    items = make_images(tmp_path)
    partial = tmp_path / ".partial" / "out"
    first = infer(items, tmp_path / "ref.json", tmp_path / ".partial" / "ref")
    assert first.complete
    stopped = infer(items, tmp_path / "out.json", partial, max_chunks=2)
    assert not stopped.complete
    chunks = finished_chunks(partial)
    chunks[0].write_text('{"image_ids": [100, 101], "records": [')  # cut short: disk error, kill -9
    chunks[1].write_text(json.dumps({"image_ids": [7], "records": []}))  # another chunk's content
    notes: list[str] = []
    summary = infer(items, tmp_path / "out.json", partial, notify=notes.append)
    assert summary.complete and summary.chunks_damaged == 2 and summary.chunks_computed == 3
    assert len(notes) == 1 and "2 damaged chunk file(s) deleted and recomputed" in notes[0]
    assert files_bytes(tmp_path / "out.json") == files_bytes(tmp_path / "ref.json")


def test_wrong_size_image_stops_the_run(tmp_path):
    items = make_images(tmp_path, n=2)
    wrong = [ImageItem(i.image_id, i.path, (99, 99)) for i in items]
    with pytest.raises(LvisctlError, match=r"0.png: image is 16x12 but the annotation file says 99x99"):
        infer(wrong, tmp_path / "out.json", tmp_path / ".partial" / "out")
    assert not (tmp_path / "out.segm.json").exists()


class _Data:
    """The bits of LvisData that the up-front check reads."""

    def __init__(self, folder, sizes):
        self.path = folder / "val.json"
        self.image_root = folder
        self.image_root_source = "the json's folder"
        self.images = {i: {"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)}

    def image_path(self, i):
        return self.image_root / f"{i}.png"

    def image_hw(self, i):
        return self.images[i]["height"], self.images[i]["width"]


def test_up_front_check_strict_and_sizes(tmp_path):
    for i in range(3):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n")  # a PNG cut after its signature
    data = _Data(tmp_path, [(4, 6)] * 3)
    assert list(check_images_up_front(data, strict=False)) == [1]
    with pytest.raises(LvisctlError, match=r"val.json: --strict: 1 unreadable image\(s\): image 1: "):
        check_images_up_front(data, strict=True)
    data.images[2]["height"] = 5
    with pytest.raises(
        LvisctlError, match=r"2.png: image is 6x4 but .* says 6x5 .*\(image 2\); nothing was written"
    ):
        check_images_up_front(data, strict=False)


def test_16_bit_images_predict_like_their_8_bit_twins(tmp_path):
    items8 = make_images(tmp_path, n=3)
    items16 = []
    for item in items8:
        gray = np.asarray(Image.open(item.path).convert("L"))
        Image.fromarray(gray).save(item.path)  # the 8-bit grayscale image ...
        path16 = tmp_path / f"{item.image_id}_16.png"
        Image.fromarray(gray.astype(np.uint16) * 257).save(path16)  # ... and the same image in 16 bits
        items16.append(ImageItem(item.image_id, path16))
    infer(items8, tmp_path / "a.json", tmp_path / ".partial" / "a")
    infer(items16, tmp_path / "b.json", tmp_path / ".partial" / "b")
    assert files_bytes(tmp_path / "a.json") == files_bytes(tmp_path / "b.json")
