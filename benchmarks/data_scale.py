"""Memory and speed of ``train``'s data pipeline on an LVIS-train-size file: 1 process, N DataLoader workers.

Builds the LVIS-train-shaped synthetic json of ``load_speed.py`` (100,170 images, ~1.27M polygon
annotations, 1.3 GB at ``--size-gb 1.3``) and one 640x480 JPEG that every image entry links to, then
starts the training data pipeline as ``train`` does (``lvisctl.data.train_data.build_train_data`` +
the trainer's per-epoch DataLoader, stage-1 config: RFS + Mosaic / rotation / scale jitter / flip) in a
fresh process, iterates ``--samples`` samples and reports, for the main process and each worker
(psutil ``memory_full_info``): RSS, USS (memory only that process holds) and PSS, plus load time and
samples/s. Two ways of holding the annotations are measured, each in its own process:

* ``records``: the parsed ``LvisData`` (dicts, lists and float32 arrays; what ``train`` held before);
* ``store``: the ``LvisStore`` numpy buffers, memory-mapped from the sha256-keyed cache, and workers
  set up by ``init_train_worker`` (``gc.freeze``, 1 MiB mmap threshold; ``train`` now);
  ``store-noinit``: the store alone.

And, for the cache: a cold load (parse + validate + write the entry) and a warm one (hash + map).

    python benchmarks/data_scale.py --work /tmp/ds --size-gb 0.13 --samples 400      # 1/10 size
    python benchmarks/data_scale.py --work /tmp/ds --size-gb 1.3 --out scale.json    # full size

The workers' growth is the sum of their USS: what the node pays per worker beyond what is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CONFIG = "configs/stage1/s101_da_eql_rfs_tricks.yaml"  # Table 1's stage-1 augmentation and RFS
GB = 1 << 30
MIN_FREE_GB = 3  # the pipeline run stops when the machine has less memory available than this


# ------------------------------------------------------------------------------------------ workload
def prepare(work: Path, size_gb: float) -> tuple[Path, Path]:
    """The json (reused when its size matches) and an image folder where every image is one JPEG."""
    from load_speed import write_lvis_like
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    ann = work / f"lvis_like_train_{size_gb:g}gb.json"
    marker = ann.with_suffix(".shape.json")
    if not (ann.is_file() and marker.is_file()):
        t = time.perf_counter()
        shape = write_lvis_like(ann, size_gb)
        marker.write_text(json.dumps(shape))
        print(f"wrote {ann} ({shape['bytes'] / 1e9:.2f} GB) in {time.perf_counter() - t:.0f}s", flush=True)
    shape = json.loads(marker.read_text())
    images = work / "images"
    folder = images / "train2017"
    folder.mkdir(parents=True, exist_ok=True)
    base = images / "base.jpg"
    if not base.is_file():
        import numpy as np

        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:480, 0:640]
        pix = np.stack([xx * 255 // 640, yy * 255 // 480, (xx + yy) % 256], -1) + rng.integers(
            0, 30, (480, 640, 3)
        )
        Image.fromarray(pix.clip(0, 255).astype("uint8")).save(base, quality=90)
    for i in range(1, shape["images"] + 1):  # the json's coco_url: train2017/<id:012d>.jpg
        link = folder / f"{i:012d}.jpg"
        if not link.is_symlink():
            link.symlink_to(base)
    return ann, images


# ------------------------------------------------------------------------------------------ one process
def memory(pid: int) -> dict[str, float]:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"rss_gb": info.rss / GB, "uss_gb": info.uss / GB, "pss_gb": info.pss / GB}


def run_pipeline(ann: Path, images: Path, mode: str, samples: int, workers: int, cache: Path) -> dict:
    """``train``'s data set-up and epoch loader in this process; memory per process every 500 samples."""
    import psutil
    import torch

    import lvisctl.data.lvis_cache as lvis_cache
    from lvisctl.config import load_config
    from lvisctl.data.lvis import load_lvis
    from lvisctl.data.train_data import build_train_data
    from lvisctl.engine import loader as trainer
    from lvisctl.engine.distributed import DistInfo
    from lvisctl.engine.loader import epoch_loader as _epoch_loader
    from lvisctl.rundir import RunDir

    if mode == "records":  # what train held before: the parsed records themselves
        lvis_cache.load_lvis_shared = lambda path, image_root=None, **_: load_lvis(
            path, image_root=image_root
        )
    if mode in ("records", "store-noinit"):  # ... and workers without init_train_worker (train before)
        trainer.init_train_worker = lambda worker_id: None
    os.environ["LVISCTL_CACHE_DIR"] = str(cache)
    overrides = [f"data.train={ann}", f"data.image_root={images}", f"train.num_workers={workers}"]
    cfg = load_config(str(REPO / CONFIG), overrides)
    info = DistInfo(device=torch.device("cpu"))
    t, cpu = time.perf_counter(), time.process_time()
    data = build_train_data(cfg, RunDir(cache.parent / "run"), info)
    out: dict[str, Any] = {"mode": mode, "load_seconds": time.perf_counter() - t}
    out["load_cpu_seconds"] = time.process_time() - cpu
    out["after_load"] = {"main": memory(os.getpid())}
    loader = _epoch_loader(data, cfg, info, epoch=0, start=0)
    it, seen, t = iter(loader), 0, time.perf_counter()
    checkpoints, marks = [], sorted({min(samples, k) for k in (500, 1000, 1500, samples)})
    for images_batch, _ in it:
        seen += len(images_batch)
        if marks and seen >= marks[0]:
            marks.pop(0)
            procs = {"main": memory(os.getpid())}
            for k, w in enumerate(it._workers):  # the DataLoader's worker processes
                procs[f"worker{k}"] = memory(w.pid)
            checkpoints.append({"samples": seen, "seconds": time.perf_counter() - t, "procs": procs})
            with open(cache.parent / f"{mode}.progress.jsonl", "a") as fh:  # survives an interrupted run
                fh.write(json.dumps(checkpoints[-1]) + "\n")
        if seen >= samples:
            break
        if psutil.virtual_memory().available < MIN_FREE_GB * GB:  # a shared machine: stop, do not swap-kill
            out["stopped"] = f"less than {MIN_FREE_GB} GiB available after {seen} samples"
            break
    out["samples"], out["seconds"] = seen, time.perf_counter() - t
    out["samples_per_s"] = seen / out["seconds"]
    out["checkpoints"] = checkpoints
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    del it
    return out


def cached_load(ann: Path, cache: Path) -> dict:
    """``load_lvis_shared`` alone (cold: parse + write the entry; warm: hash + map), timed."""
    from lvisctl.data.lvis_cache import load_lvis_shared

    t, cpu = time.perf_counter(), time.process_time()
    store = load_lvis_shared(ann, cache_dir=cache)
    stats = store.category_stats()  # what train reads of every annotation (the RFS statistics)
    return {
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20),
        "annotations": int(stats.instance_count.sum()),
    }


def in_child(args: argparse.Namespace, task: str, mode: str = "") -> dict:
    """Run one measurement in a fresh interpreter (its peak RSS and its workers are its own)."""
    cmd = [sys.executable, __file__, "--child", task, "--mode", mode or "store", "--work", str(args.work)]
    cmd += ["--size-gb", str(args.size_gb), "--samples", str(args.samples), "--workers", str(args.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"{task} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ report
def summary(run: dict) -> dict:
    """Main process and the workers' sum at the last checkpoint."""
    last = run["checkpoints"][-1]["procs"]
    workers = [v for k, v in last.items() if k.startswith("worker")]
    return {
        "load_s": round(run["load_seconds"], 1),
        "samples_per_s": round(run["samples_per_s"], 2),
        "main_rss_gb": round(last["main"]["rss_gb"], 2),
        "main_uss_gb": round(last["main"]["uss_gb"], 2),
        "workers": len(workers),
        "workers_uss_sum_gb": round(sum(w["uss_gb"] for w in workers), 2),
        "workers_pss_sum_gb": round(sum(w["pss_gb"] for w in workers), 2),
        "workers_rss_max_gb": round(max((w["rss_gb"] for w in workers), default=0.0), 2),
    }


def node_estimate(s: dict, ranks: int, shared_gb: float) -> float:
    """Private memory of ``ranks`` processes with their workers, plus what they share once (page cache)."""
    return ranks * (s["main_uss_gb"] + s["workers_uss_sum_gb"]) + shared_gb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the json, images and cache (kept)")
    ap.add_argument("--size-gb", type=float, default=1.3)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--modes", default="records,store", help="which pipelines to run (comma-separated)")
    ap.add_argument("--warm-only", action="store_true", help="keep the cache entry (no cold / warm loads)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as json here")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work.resolve()
    ann, images = prepare(args.work, args.size_gb)
    cache = args.work / "cache"
    if args.child == "pipeline":
        print(json.dumps(run_pipeline(ann, images, args.mode, args.samples, args.workers, cache)))
        return
    if args.child == "load":
        print(json.dumps(cached_load(ann, cache)))
        return
    results: dict[str, Any] = {"size_gb": args.size_gb, "load_average": os.getloadavg()}
    results["machine"] = (
        f"{os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GB:.0f} GiB"
    )
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    modes = [m for m in args.modes.split(",") if m]
    if "store" in modes and not args.warm_only:
        for entry in cache.glob("[0-9a-f]*"):  # a cold load first: parse, validate, write the entry
            import shutil

            shutil.rmtree(entry)
        results["cache_cold"] = in_child(args, "load")
        print("cache cold:", results["cache_cold"], flush=True)
        results["cache_warm"] = in_child(args, "load")
        print("cache warm:", results["cache_warm"], flush=True)
    shared = sum(f.stat().st_size for f in cache.glob("[0-9a-f]*/*.npy")) / GB
    for mode in modes:
        run = in_child(args, "pipeline", mode)
        s = summary(run)
        shared_gb = shared if mode.startswith("store") else 0.0
        s["node_8x4_estimate_gb"] = round(node_estimate(s, 8, shared_gb), 1)
        results[mode] = {"summary": s, "run": run}
        print(mode, json.dumps(s), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
