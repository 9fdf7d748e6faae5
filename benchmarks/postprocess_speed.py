"""Test-time mask post-processing per image: paste 300 RoI masks (28x28) to image size, threshold, RLE-encode,
build the results records; lvisctl's fast path next to the obvious way (torchvision's
``paste_masks_in_image`` + ``> 0.5`` + pycocotools ``encode`` on the [N, H, W] stack).

    .venv/bin/python benchmarks/postprocess_speed.py                 # 640x480 and 1333x800, 300 dets, CPU
    .venv/bin/python benchmarks/postprocess_speed.py --quick         # 100 dets, 2 repeats (a smoke run)
    .venv/bin/python benchmarks/postprocess_speed.py --device cuda   # the paste on the GPU too
    .venv/bin/python benchmarks/postprocess_speed.py --e2e --before /tmp/before   # tta-infer end to end

Each method runs in a forked child per repeat, interleaved with the other (the machine may be shared);
the table shows the minimum time over repeats and the child's peak RSS above an idle child's. Every
repeat checks that both give the same RLE strings.

``--e2e``: the whole ``tta-infer`` (plain single scale and ``--tta paper``) on the demo's 128 px synthetic
images and on the same images enlarged to 640 x 480, with a demo-config model trained for a few iterations
(300 detections per image, CPU, one thread),
seconds per image of this checkout and, with ``--before DIR``, of another checkout of lvisctl (e.g. ``git
worktree add /tmp/before <commit>``), run alternately in the same session. Per image = (time for N + 2
images - time for 2 images) / N, so start-up and model loading are not counted. The data and model are
made once under ``--work`` (kept for reruns). It also reports how far the two versions' outputs differ:
the boxes and scores, and the mean mask IoU of corresponding detections.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lvisctl.data.categories import CategoryMap  # noqa: E402
from lvisctl.inference.results import detections_to_records, encode_masks, is_empty_mask  # noqa: E402


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
    keep = [i for i, rle in enumerate(rles) if not is_empty_mask(rle)]  # never written (issue 20)
    rles = [rles[i] for i in keep]
    index = torch.tensor(keep, dtype=torch.long, device=dets["boxes"].device)
    base = {k: dets[k][index] for k in ("boxes", "scores", "labels")}
    placeholder = torch.ones((len(rles), 1, 1), dtype=torch.bool)  # non-empty: the writer keeps every row
    records = detections_to_records(1, {**base, "masks": placeholder}, CMAP)
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
    ap.add_argument("--quick", action="store_true", help="100 detections, 2 repeats (--e2e: 4 images, 1)")
    ap.add_argument("--e2e", action="store_true", help="time tta-infer end to end (see the docstring)")
    ap.add_argument("--before", help="--e2e: another lvisctl checkout to time next to this one")
    ap.add_argument("--work", default="/tmp/lvisctl_postprocess_e2e", help="--e2e: data, model, outputs")
    ap.add_argument("--images", type=int, default=8, help="--e2e: 128 px images timed (after 2 warm-up)")
    ap.add_argument("--images-large", type=int, default=4, help="--e2e: 640x480 images timed")
    ap.add_argument("--only", action="append", help="--e2e: only rows whose name contains this")
    ap.add_argument("--iters", type=int, default=40, help="--e2e: training iterations of the model")
    args = ap.parse_args()
    if args.e2e:
        if args.quick:
            args.images, args.images_large = 2, 1
        args.repeat = min(args.repeat, 5) if "--repeat" in sys.argv else 1
        end_to_end(args)
        return
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


# ------------------------------------------------------------------------------ end to end
DEMO_PAPER = [  # tta_ablation.py's demo settings: 6 scales around the 128 px images, flip, all four changes
    "--tta", "paper", "--scales", "96,112,128,160,192,224",
    "inference.tta.valid_ranges=[[32,null],[16,null],[0,null],[0,96],[0,64],[0,48]]",
    "inference.tta.mask_box_size=56", "inference.tta.max_size=448",
]  # fmt: skip
LARGE_PAPER = [  # 3 scales x 2 flips around 640 x 480 (fewer than the paper's 6: the CPU time)
    "--tta", "paper", "--scales", "320,480,640",
    "inference.tta.valid_ranges=[[64,null],[0,null],[0,192]]", "inference.tta.max_size=1333",
]  # fmt: skip
# (row, tta-infer arguments, image set): "demo" = the demo's 128 px images, "large" = the same images
# enlarged to 640 x 480 (LVIS-like: the post-processing cost grows with the image area)
E2E_MODES = [
    ("plain (128), 128 px", ["--scales", "128"], "demo"),
    ("paper (6 scales x 2 flips), 128 px", DEMO_PAPER, "demo"),
    ("plain (480), 640x480", ["--scales", "480", "inference.max_size=1333"], "large"),
    ("paper (3 scales x 2 flips), 640x480", LARGE_PAPER, "large"),
]
REPO = Path(__file__).resolve().parents[1]


def lvisctl(code: Path, *args: str) -> tuple[float, float]:
    """Run ``lvisctl ARGS`` from checkout ``code`` on one thread: (wall s, CPU s of the child)."""
    import resource
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lvisctl", *args], cwd=code, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"lvisctl {' '.join(args)} failed ({code}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def e2e_setup(work: Path, counts: dict[str, int], iters: int) -> tuple[Path, dict[str, list[Path]]]:
    """A run dir with demo data and a few-iteration demo model; per image set, the val subsets of 2 and
    2 + ``counts[set]`` images (the large set: the demo images enlarged to 640 x 480, without annotations)."""
    import json

    from PIL import Image

    run = work / "run"
    ckpt = run / "checkpoints" / "stage1_final.pt"
    if not ckpt.exists():
        lvisctl(REPO, "data", "synth", "--run-dir", str(run), "--preset", "demo", "--train-images", "160",
                "--val-images", str(max(max(counts.values()) + 2, 24)), "--overwrite")  # fmt: skip
        lvisctl(REPO, "train", "--stage", "1", "--config", "configs/demo/stage1.yaml", "--run-dir", str(run),
                f"solver.max_iter={iters}", "solver.warmup_iters=10", "train.checkpoint_period=100000",
                "train.num_workers=0")  # fmt: skip
    val = run / "data" / "lvis_v1_val.json"
    data = json.loads(val.read_text())
    data["images"] = sorted(data["images"], key=lambda im: im["id"])
    subsets: dict[str, list[Path]] = {}
    for kind, count in counts.items():
        subsets[kind] = []
        for n in (2, count + 2):
            images = [dict(im) for im in data["images"][:n]]
            ids = {im["id"] for im in images}
            anns = [a for a in data.get("annotations", []) if a["image_id"] in ids]
            if kind == "large":
                anns = []
                for im in images:
                    rel = im.get("file_name") or "/".join(im["coco_url"].split("/")[-2:])
                    name = f"large/{Path(rel).stem}.png"
                    target = val.parent / name
                    if not target.exists():
                        target.parent.mkdir(exist_ok=True)
                        Image.open(val.parent / rel).convert("RGB").resize((640, 480), Image.BILINEAR).save(
                            target
                        )
                    im.update(file_name=name, width=640, height=480)
            path = val.with_name(f"bench_{kind}_{n}.json")
            path.write_text(json.dumps(dict(data, images=images, annotations=anns)))
            subsets[kind].append(path)
    return run, subsets


def mask_agreement(a: Path, b: Path) -> tuple[bool, float, float]:
    """(same boxes and scores, share of identical masks, mean mask IoU of corresponding detections; two
    empty masks count as IoU 1) of two tta-infer outputs."""
    import json

    import pycocotools.mask as mask_utils

    box_a, box_b = (json.loads(p.with_name(p.name.replace(".segm.", ".bbox.")).read_text()) for p in (a, b))
    key = [[(r["bbox"], round(r["score"], 5)) for r in box] for box in (box_a, box_b)]
    seg_a, seg_b = json.loads(a.read_text()), json.loads(b.read_text())
    if len(seg_a) != len(seg_b) or not seg_a:
        return key[0] == key[1], float("nan"), float("nan")
    ious, equal = [], 0
    for x, y in zip(seg_a, seg_b, strict=True):
        equal += x["segmentation"] == y["segmentation"]
        empty = mask_utils.area([x["segmentation"], y["segmentation"]]).sum() == 0
        iou = 1.0 if empty else mask_utils.iou([x["segmentation"]], [y["segmentation"]], [0])[0, 0]
        ious.append(float(iou))
    return key[0] == key[1], equal / len(seg_a), float(np.mean(ious))


def end_to_end(args: argparse.Namespace) -> None:
    work = Path(args.work)
    counts = {"demo": args.images, "large": args.images_large}
    run, subsets = e2e_setup(work, counts, args.iters)
    versions = {"this checkout": REPO}
    if args.before:
        versions = {"before": Path(args.before).resolve(), **versions}
    common = ["inference.detections_per_image=300", "inference.num_workers=0", "inference.chunk_size=1000"]
    print(f"tta-infer end to end: demo model ({args.iters} iterations), 300 detections per image, CPU, 1 "
          f"thread; s/image = difference of N + 2 and 2 images (N = {args.images} at 128 px, "
          f"{args.images_large} at 640x480), min of {args.repeat}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    rows = []
    for i, (mode, mode_args, kind) in enumerate(E2E_MODES):
        if args.only and not any(o in mode for o in args.only):
            continue
        best: dict[str, tuple[float, float]] = {}
        outputs: dict[str, Path] = {}
        for rep in range(args.repeat):
            for name, code in versions.items():  # interleaved: the machine may be shared
                times = []
                for images in subsets[kind]:
                    out = out_dir / f"{name.replace(' ', '_')}_{i}_{images.stem}_{rep}.json"
                    for old in out_dir.glob(out.stem + ".*"):
                        old.unlink()
                    times.append(lvisctl(code, "tta-infer", "--run-dir", str(run), "--images", str(images),
                                         "--out", str(out), *mode_args, *common))  # fmt: skip
                    outputs[name] = out.with_suffix(".segm.json")
                wall = (times[1][0] - times[0][0]) / counts[kind]
                cpu = (times[1][1] - times[0][1]) / counts[kind]
                prev = best.get(name, (math.inf, math.inf))
                best[name] = (min(prev[0], wall), min(prev[1], cpu))
        compare = ""
        if len(versions) == 2:
            same, equal, iou = mask_agreement(*outputs.values())
            compare = f"{'yes' if same else 'no'} | {100 * equal:.0f}% | {iou:.3f}"
        rows.append((mode, best, compare))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    head = " | ".join(f"{n} s/image (wall / CPU)" for n in versions)
    extra = " | same boxes and scores | identical masks | mean mask IoU" if len(versions) == 2 else ""
    print(f"\n| tta-infer | {head}{extra} |")
    print("|---|" + "---|" * (len(versions) + (3 if extra else 0)))
    for mode, best, compare in rows:
        cells = " | ".join(f"{best[n][0]:.2f} / {best[n][1]:.2f}" for n in versions)
        print(f"| {mode} | {cells}{' | ' + compare if compare else ''} |")


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
