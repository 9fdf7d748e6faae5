"""Image sources for inference: folders, image lists, image-info jsons -> LVIS image-info files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lvisctl.data import image_sources as src
from lvisctl.errors import LvisctlError


def _jpeg(path, h=20, w=30, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path, **save)


def test_stable_ids_are_53_bit_hashes_of_the_relative_path():
    a = src.stable_image_id("a/b/0001.jpg")
    assert a == src.stable_image_id("a/b/0001.jpg") and 0 < a < 2**53
    assert a != src.stable_image_id("a/b/0002.jpg") and a != src.stable_image_id("a/b/0001.jpg", salt=1)


def test_a_hash_collision_takes_the_next_salt(monkeypatch):
    real = src.stable_image_id
    monkeypatch.setattr(src, "stable_image_id", lambda rel, salt=0: 7 if salt == 0 else real(rel, salt))
    planned = list(src._unique_ids([("x.jpg", None), ("y.jpg", None), ("z.jpg", {"id": 5})]))
    assert [p.image_id for p in planned] == [7, real("y.jpg", 1), 5]
    with pytest.raises(LvisctlError, match="duplicate image id 5"):
        list(src._unique_ids([("x.jpg", {"id": 5}), ("y.jpg", {"id": 5})]))


def test_folder_walk_is_recursive_sorted_and_images_only(tmp_path):
    for rel in ("b/2.jpg", "b/1.PNG", "a.jpeg", "c/d/e.jpg", ".hidden.jpg", "notes.txt", "b/x.gif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    assert list(src.iter_folder(tmp_path)) == ["a.jpeg", "b/1.PNG", "b/2.jpg", "c/d/e.jpg"]


def test_image_lists(tmp_path):
    oi = tmp_path / "oi.csv"
    oi.write_text('ImageID,Subset,OriginalURL\n000a1249af2bc5f0,train,"http://x,y"\n,train,\nffff,test,u\n')
    assert list(src.iter_image_list(oi)) == ["000a1249af2bc5f0.jpg", "ffff.jpg"]
    named = tmp_path / "named.csv"
    named.write_text("score,file_name\n1,a/b.png\n2,c.jpg\n")
    assert list(src.iter_image_list(named)) == ["a/b.png", "c.jpg"]
    lines = tmp_path / "list.txt"
    lines.write_text("train/0001\n\nx/y.PNG\n")
    assert list(src.iter_image_list(lines)) == ["train/0001.jpg", "x/y.PNG"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,url\n1,2\n")
    with pytest.raises(LvisctlError, match="bad.csv: CSV without an ImageID, file_name or path column"):
        list(src.iter_image_list(bad))


def test_header_sizes_exif_rotation_and_truncation(tmp_path):
    _jpeg(tmp_path / "plain.jpg", h=20, w=30)
    assert src.read_image_size(tmp_path / "plain.jpg") == (30, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown: the upright image is 20 wide, 30 high
    _jpeg(tmp_path / "rot.jpg", h=20, w=30, exif=exif)
    assert src.read_image_size(tmp_path / "rot.jpg") == (20, 30)
    data = (tmp_path / "plain.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) - 10])
    with pytest.raises(Exception, match="truncated|end"):
        src.read_image_size(tmp_path / "cut.jpg")


def test_image_info_json_without_sizes_is_completed(tmp_path):
    _jpeg(tmp_path / "imgs" / "a.jpg", h=10, w=12)
    _jpeg(tmp_path / "imgs" / "sub" / "b.jpg", h=14, w=16)
    hand = tmp_path / "hand.json"
    hand.write_text(
        json.dumps({"images": [{"file_name": "imgs/a.jpg"}, {"id": 42, "file_name": "imgs/sub/b.jpg"}]})
    )
    cats = [{"id": 1, "name": "x", "frequency": "f", "image_count": 1, "instance_count": 1}]
    out = src.image_info_for(hand, out_dir=tmp_path / "out", categories=lambda: cats)
    assert out.converted and out.num_images == 2 and out.image_root == tmp_path.resolve()
    payload = json.loads(out.path.read_text())
    assert payload["categories"] == cats and payload["annotations"] == []
    by_name = {i["file_name"]: i for i in payload["images"]}
    assert by_name["imgs/sub/b.jpg"]["id"] == 42 and (
        by_name["imgs/a.jpg"]["width"],
        by_name["imgs/a.jpg"]["height"],
    ) == (12, 10)
    assert by_name["imgs/a.jpg"]["id"] == src.stable_image_id("imgs/a.jpg")
    again = src.image_info_for(hand, out_dir=tmp_path / "out", categories=lambda: cats)
    assert again.path == out.path  # same content, same file
    # a complete file passes through untouched, and categories() is never asked for
    assert src.image_info_for(out.path, out_dir=tmp_path / "o2", categories=lambda: 1 / 0).path == out.path
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(LvisctlError, match="1 image record\\(s\\) without file_name or coco_url"):
        src.image_info_for(bad, out_dir=tmp_path / "out", categories=lambda: cats)
    with pytest.raises(LvisctlError, match="--image-list goes with a folder"):
        src.image_info_for(hand, out_dir=tmp_path / "out", categories=lambda: cats, image_list=bad)


def test_window_streaming_keeps_source_order_and_reports_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(src, "_WINDOW_PER_WORKER", 2)  # windows of 4 images with 2 threads
    names = [f"{i:02d}.jpg" for i in range(11)]
    for i, name in enumerate(names):
        if i % 5 == 3:
            (tmp_path / name).write_bytes(b"junk")
        else:
            _jpeg(tmp_path / name, h=8 + i, w=9)
    skips = src.SkipReport()
    planned = src._unique_ids((n, None) for n in names)
    records = list(src.iter_image_records(planned, tmp_path, skips, workers=2))
    assert [r["file_name"] for r in records] == [n for i, n in enumerate(names) if i % 5 != 3]
    assert [r["height"] for r in records] == [8 + i for i in range(11) if i % 5 != 3]
    assert skips.count == 2 and [p for p, _ in skips.first] == ["03.jpg", "08.jpg"]
    assert skips.lines()[0] == "skipped 2 unreadable or missing image(s):"


def test_duplicate_list_entries_are_kept_once_and_reported(tmp_path):
    """Issue 22 item 13: a repeated ImageID listed the image twice under two ids."""
    root = tmp_path / "imgs"
    root.mkdir()
    for name in ("a", "b"):
        _jpeg(root / f"{name}.jpg", h=20, w=30)
    listed = tmp_path / "oi.csv"
    listed.write_text("ImageID\na\nb\na\na.jpg\n")
    out = src.image_info_for(root, out_dir=tmp_path / "out", categories=lambda: [], image_list=listed)
    images = json.loads(out.path.read_text())["images"]
    assert sorted(i["file_name"] for i in images) == ["a.jpg", "b.jpg"] and out.num_images == 2
    assert out.skipped.duplicates == 2
    assert out.skipped.lines() == ["2 duplicate image list entries kept once (e.g. a.jpg, a.jpg)"]


def test_image_list_encodings_bom_and_folder(tmp_path):
    """Issue 22 items 23, 24: UTF-16 / non-UTF-8 lists were tracebacks; a BOM hid the ImageID column;
    a folder given as the list was 'not found'."""
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfImageID,Subset\nabc,train\n")
    assert list(src.iter_image_list(bom)) == ["abc.jpg"]
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text("ImageID\nabc\ndef\n", encoding="utf-16")
    assert list(src.iter_image_list(utf16)) == ["abc.jpg", "def.jpg"]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(LvisctlError, match=r"latin.txt: not UTF-8 text \(byte 3\)"):
        list(src.iter_image_list(latin))
    (tmp_path / "imgs").mkdir()
    with pytest.raises(LvisctlError, match="is a folder; --image-list takes a file"):
        src.image_info_for(
            tmp_path / "imgs", out_dir=tmp_path / "o", categories=lambda: [], image_list=tmp_path / "imgs"
        )
