"""Collectives under torchrun, on 2 gloo processes (the CPU stand-in for NCCL): evaluation gathers to
rank 0 only, detectron2's multi-GPU test scores every rank's predictions, the process group carries the
configured timeout, inference chunks are balanced across ranks."""

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lvisctl.inference.chunks import ImageItem, plan_chunks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world_size: int, port: int) -> None:
    from tests.helpers.engine_standins import join_gloo

    join_gloo(rank, world_size, port)


def _d2_worker(rank: int, port: int, gt: str, out: str) -> None:
    from lvisctl.engine.distributed import cleanup_distributed, init_distributed
    from tests.helpers.detectron2_outputs import _outputs

    _join(rank, 2, port)
    init_distributed("cpu")
    from lvisctl.integrations.detectron2 import LvisctlLVISEvaluator

    evaluator = LvisctlLVISEvaluator(gt)
    inputs, outputs = _outputs(perfect=True)
    evaluator.process(inputs[rank::2], outputs[rank::2])  # detectron2's test shards the images by rank
    results = evaluator.evaluate()
    torch.save({"results": dict(results) if results is not None else None}, Path(out) / f"d2_{rank}.pt")
    cleanup_distributed()


@pytest.mark.slow
def test_detectron2_evaluator_scores_all_ranks_predictions(tmp_path):
    from tests.helpers.tiny_run import make_lvis

    gt = make_lvis(tmp_path)
    mp.spawn(_d2_worker, args=(_free_port(), str(gt), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "d2_0.pt", weights_only=True)["results"]
    r1 = torch.load(tmp_path / "d2_1.pt", weights_only=True)["results"]
    # every image's perfect prediction counted: 100, not the AP of rank 0's half against the whole GT
    assert r0["bbox"]["AP"] == pytest.approx(100.0) and r0["segm"]["AP"] == pytest.approx(100.0)
    assert r1 is None  # as detectron2's LVISEvaluator: only the main process returns results


def _gather_worker(rank: int, port: int, out: str) -> None:
    from lvisctl.engine.distributed import cleanup_distributed, gather_to_main, init_distributed

    _join(rank, 2, port)
    info = init_distributed("cpu")
    got = gather_to_main([{"rank": rank, "i": i} for i in range(rank + 2)], info)
    torch.save({"got": got}, Path(out) / f"gather_{rank}.pt")
    cleanup_distributed()


@pytest.mark.slow
def test_gather_to_main_only_rank0_receives(tmp_path):
    mp.spawn(_gather_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    g0 = torch.load(tmp_path / "gather_0.pt", weights_only=True)
    g1 = torch.load(tmp_path / "gather_1.pt", weights_only=True)
    assert [len(part) for part in g0["got"]] == [2, 3] and g0["got"][1][2] == {"rank": 1, "i": 2}
    assert g1["got"] == []  # the other ranks keep only their own records


def test_inference_chunks_are_balanced_across_ranks():
    items = [ImageItem(i, Path()) for i in range(1037)]
    chunks = plan_chunks(items, 500, world_size=2)
    assert [it.image_id for c in chunks for it in c] == list(range(1037))  # all, once, in order
    per_rank = [sum(len(c) for c in chunks[r::2]) for r in range(2)]
    assert max(per_rank) - min(per_rank) <= 1 and max(len(c) for c in chunks) <= 500
    # one process keeps the plain consecutive chunks (chunk files of earlier runs stay valid)
    assert [len(c) for c in plan_chunks(items, 500)] == [500, 500, 37]
