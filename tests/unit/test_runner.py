import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from lvisctl.engine.distributed import DistInfo
from lvisctl.inference.chunks import ImageItem, finished_chunks, plan_chunks
from lvisctl.inference.predictor import Predictor
from lvisctl.inference.results import read_split_results
from lvisctl.inference.runner import InferenceOptions, read_image, run_inference
from tests.helpers.inference import CMAP, ContentModel, files_bytes, infer, make_images


def test_plan_chunks():
    items = [ImageItem(i, f"{i}.png") for i in range(5)]
    assert [[it.image_id for it in c] for c in plan_chunks(items, 2)] == [[0, 1], [2, 3], [4]]


def test_read_image_converts_grey_to_rgb(tmp_path):
    Image.fromarray(np.full((3, 4), 255, np.uint8)).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")  # the runner's float view of the one reader (data/image_io.py)
    assert img.shape == (3, 3, 4) and img.dtype == torch.float32 and img.max().item() == 1.0


def test_run_writes_all_images_in_order_and_cleans_up(tmp_path):
    items = make_images(tmp_path)
    summary = infer(items, tmp_path / "out.json", tmp_path / ".partial" / "out", batch_size=2)
    assert sorted(p.name for p in tmp_path.glob("out*")) == ["out.bbox.json", "out.segm.json"]
    segm = json.loads((tmp_path / "out.segm.json").read_text())
    bbox = json.loads((tmp_path / "out.bbox.json").read_text())
    # The segm file has no boxes (mask areas in the evaluators), the bbox file no masks.
    assert all(set(r) == {"image_id", "category_id", "score", "segmentation"} for r in segm)
    assert all(set(r) == {"image_id", "category_id", "score", "bbox"} for r in bbox)
    assert [(r["image_id"], r["score"]) for r in segm] == [(r["image_id"], r["score"]) for r in bbox]
    # image 100 is 12x16: the first detection's box is [0, 0, w/2, h/2] -> xywh [0, 0, 8, 6]
    assert bbox[0]["bbox"] == [0.0, 0.0, 8.0, 6.0]
    records = read_split_results(tmp_path / "out.json")
    assert summary.complete and summary.images == 5 and summary.detections == 10 == len(records)
    assert [r["image_id"] for r in records] == [i for i in range(100, 105) for _ in range(2)]
    assert {r["category_id"] for r in records} == {10, 20}
    assert all(records[2 * i]["segmentation"]["size"] == [12 + i, 16] for i in range(5))
    assert not (tmp_path / ".partial").exists()


def test_interrupted_run_resumes_to_identical_file(tmp_path):
    items = make_images(tmp_path)
    infer(items, tmp_path / "full.json", tmp_path / "p_full")

    ContentModel.calls = 0
    partial = tmp_path / "p_resumed"
    first = infer(items, tmp_path / "resumed.json", partial, max_chunks=1)
    assert not first.complete and not list(tmp_path.glob("resumed*.json"))
    assert sorted(p.name for p in partial.iterdir()) == ["meta.json", "rank0_0.json"]
    assert ContentModel.calls == 2
    second = infer(items, tmp_path / "resumed.json", partial)
    assert second.complete and second.chunks_resumed == 1 and second.chunks_computed == 2
    assert ContentModel.calls == 5  # the finished chunk was not recomputed
    assert files_bytes(tmp_path / "resumed.json") == files_bytes(tmp_path / "full.json")
    assert not partial.exists()


def test_other_fingerprint_discards_partial_results(tmp_path):
    items = make_images(tmp_path, n=3)
    partial = tmp_path / "p"
    infer(items, tmp_path / "a.json", partial, max_chunks=1)
    predictor = Predictor(ContentModel(), "cpu", scales=(8,))
    summary = run_inference(
        predictor,
        items,
        CMAP,
        tmp_path / "a.json",
        partial,
        fingerprint="other",
        options=InferenceOptions(chunk_size=2),
    )
    assert summary.complete and summary.chunks_resumed == 0 and summary.chunks_computed == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, items, out, partial, max_chunks):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        summary = infer(items, out, partial, dist=DistInfo(rank=rank, world_size=2), max_chunks=max_chunks)
        names = sorted(p.name for p in partial.iterdir()) if partial.exists() else []
        (out.parent / f"summary{rank}.json").write_text(json.dumps([summary.chunks_computed, names]))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    items = make_images(tmp_path)
    infer(items, tmp_path / "single.json", tmp_path / "p_single")

    partial = tmp_path / ".partial" / "multi"
    out = tmp_path / "multi.json"
    # Interrupted: 5 images in chunks of <= 2 planned as 4 chunks (a multiple of the 2 ranks, so both get
    # the same work), each rank stops after 1 -> chunks 0 (rank 0) and 1 (rank 1) on disk.
    mp.start_processes(_worker, args=(_free_port(), items, out, partial, 1), nprocs=2, start_method="fork")
    computed0, names0 = json.loads((tmp_path / "summary0.json").read_text())
    computed1, _ = json.loads((tmp_path / "summary1.json").read_text())
    assert (computed0, computed1) == (1, 1) and not list(tmp_path.glob("multi*.json"))
    assert names0 == ["meta.json", "rank0_0.json", "rank1_1.json"]
    # Resumed: chunks 2 and 3 are pending, one for each rank.
    mp.start_processes(_worker, args=(_free_port(), items, out, partial, None), nprocs=2, start_method="fork")
    computed0, _ = json.loads((tmp_path / "summary0.json").read_text())
    computed1, _ = json.loads((tmp_path / "summary1.json").read_text())
    assert (computed0, computed1) == (1, 1)
    assert files_bytes(out) == files_bytes(tmp_path / "single.json")
    assert not partial.exists() and not partial.parent.exists()


def test_finished_chunks_ignores_other_files(tmp_path):
    for name in ("rank0_0.json", "rank1_11.json", "meta.json", ".rank0_1.json.abc.tmp"):
        (tmp_path / name).write_text("{}")
    assert {k: p.name for k, p in finished_chunks(tmp_path).items()} == {
        0: "rank0_0.json",
        11: "rank1_11.json",
    }


@pytest.mark.parametrize("num_workers", [1])
def test_worker_processes_decode_in_order(tmp_path, num_workers):
    items = make_images(tmp_path, n=3)
    infer(items, tmp_path / "a.json", tmp_path / "pa")
    infer(items, tmp_path / "b.json", tmp_path / "pb", num_workers=num_workers)
    assert files_bytes(tmp_path / "a.json") == files_bytes(tmp_path / "b.json")
