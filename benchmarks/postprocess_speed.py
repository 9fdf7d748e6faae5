"""Test-time mask post-processing per image: paste 300 RoI masks (28x28) to image size, threshold, RLE-encode,
build the results records; lvisctl's fast path next to the obvious way (torchvision's
``paste_masks_in_image`` + ``> 0.5`` + pycocotools ``encode`` on the [N, H, W] stack).

    .venv/bin/python benchmarks/postprocess_speed.py                 # 640x480 and 1333x800, 300 dets, CPU
    .venv/bin/python benchmarks/postprocess_speed.py --quick         # 100 dets, 2 repeats (a smoke run)
    .venv/bin/python benchmarks/postprocess_speed.py --device cuda   # the paste on the GPU too

Each method runs in a forked child per repeat, interleaved with the other (the machine may be shared);
the table shows the minimum time over repeats and the child's peak RSS above an idle child's. Every
repeat checks that both give the same RLE strings.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lvisctl.data.categories import CategoryMap  # noqa: E402
from lvisctl.inference.results import detections_to_records, encode_masks  # noqa: E402


def workload(n: int, size: tuple[int, int], seed: int = 0, device: str = "cpu") -> dict:
    """``n`` detections with 28x28 mask logits and boxes of LVIS-like sizes (many small, some large)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    bw = (torch.rand(n, generator=g) ** 2 * 0.7 + 0.02) * w
    bh = (torch.rand(n, generator=g) ** 2 * 0.7 + 0.02) * h
    x0 = torch.rand(n, generator=g) * (w - bw)
    y0 = torch.rand(n, generator=g) * (h - bh)
    boxes = torch.stack([x0, y0, x0 + bw, y0 + bh], 1)
    logits = torch.randn(n, 1, 28, 28, generator=g) * 4 + 1
    return {
        "boxes": boxes.to(device),
        "scores": torch.linspace(1.0, 0.01, n, device=device),
        "labels": (torch.arange(n, device=device) % 1203) + 1,
        "mask_probs": torch.sigmoid(logits).to(device),
        "image_size": size,
    }


CMAP = CategoryMap(list(range(1, 1204)))


def obvious(dets: dict) -> list[dict]:
    """The usual pipeline: a float [N, 1, H, W] paste, threshold, encode the whole stack."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    pasted = paste_masks_in_image(dets["mask_probs"], dets["boxes"], dets["image_size"], padding=1)
    masks = pasted[:, 0] > 0.5
    rles = encode_masks(masks.cpu())
    base = {k: dets[k] for k in ("boxes", "scores", "labels")}
    records = detections_to_records(
        1, {**base, "masks": torch.zeros((len(rles), 1, 1), dtype=torch.bool)}, CMAP
    )
    for record, rle in zip(records, rles, strict=True):  # the records with the obvious RLEs
        record["segmentation"] = rle
    return records


def fast(dets: dict) -> list[dict]:
    return detections_to_records(1, dets, CMAP)


METHODS = {"obvious (torchvision paste + pycocotools)": obvious, "lvisctl postprocess": fast}


def in_child(fn, dets: dict) -> tuple[float, float, list]:
    """(seconds, peak RSS in MB, records) of ``fn(dets)`` run in a forked child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            if dets["boxes"].is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(dets) if fn is not None else []
            took = time.perf_counter() - t
            with os.fdopen(w, "wb") as fh:
                fh.write(pickle.dumps((took, out)))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        payload = fh.read()
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("benchmark child failed")
    took, out = pickle.loads(payload)
    return took, usage.ru_maxrss / 1024, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dets", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: timed in-process, GPU memory)")
    ap.add_argument("--quick", action="store_true", help="100 detections, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.dets, args.repeat = 100, 2
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"{args.dets} detections per image, 28x28 masks, min of {args.repeat} interleaved repeats, "
          f"device {args.device}, torch threads 1, {os.cpu_count()} CPUs, load {load:.1f}")  # fmt: skip
    print("\n| image | method | ms / image | peak memory above idle (MB) | same RLE |")
    print("|---|---|---|---|---|")
    for size in ((480, 640), (800, 1333)):
        dets = workload(args.dets, size, device=args.device)
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        mems: dict[str, float] = dict.fromkeys(METHODS, 0.0)
        same = True
        for _ in range(args.repeat):
            outs = {}
            for name, fn in METHODS.items():
                if args.device == "cuda":
                    took, mem, out = cuda_run(fn, dets)
                else:
                    _, idle, _ = in_child(None, dets)
                    took, peak, out = in_child(fn, dets)
                    mem = peak - idle
                times[name].append(took)
                mems[name] = max(mems[name], mem)
                outs[name] = out
            a, b = outs.values()
            same = same and a == b
        for name in METHODS:
            ms = 1000 * min(times[name])
            print(
                f"| {size[1]}x{size[0]} | {name} | {ms:.1f} | {mems[name]:.0f} | {'yes' if same else 'NO'} |"
            )
    if not same:
        sys.exit("the two methods gave different RLEs")


def cuda_run(fn, dets: dict) -> tuple[float, float, list]:
    """(seconds, peak GPU memory in MB above the inputs, records) of ``fn(dets)`` on CUDA."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t = time.perf_counter()
    out = fn(dets)
    torch.cuda.synchronize()
    took = time.perf_counter() - t
    return took, (torch.cuda.max_memory_allocated() - base) / 2**20, out


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
