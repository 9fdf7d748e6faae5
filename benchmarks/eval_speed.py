"""Evaluation speed at LVIS-val scale: ``lvisctl evaluate`` next to lvis-api and the fast peers.

Generates a synthetic workload with the real 1,203 LVIS v1 categories (``../shared/data``), 300
detections per image with compressed-RLE masks, then runs each evaluator in its own subprocess (so peak
RSS is its own) on the segm metrics and prints wall time, peak RSS and the largest difference from
lvis-api 0.5.3 over the 13 official numbers.

    .venv/bin/python benchmarks/eval_speed.py --images 19809 --workdir /tmp/evs --repeat 3   # LVIS val size
    nice .venv/bin/python benchmarks/eval_speed.py --images 5000,19809 --workdir /tmp/evs --repeat 3 \\
        --only hotcoco --only "lvisctl evaluate"   # the README's table (docs/scale.md): ~15 min
    .venv/bin/python benchmarks/eval_speed.py --images 5000 --workdir /tmp/evs --skip lvis-api --repeat 3
    .venv/bin/python benchmarks/eval_speed.py --images 5000 --workdir /tmp/evs --no-bbox  # segm-only file
    .venv/bin/python benchmarks/eval_speed.py --images 1000 --only hotcoco --only "lvisctl evaluate" \\
        --iou-types segm --extras boundary,fixed      # Boundary AP and Fixed AP next to plain segm
    .venv/bin/python benchmarks/eval_speed.py --quick  # 100 images, a smoke run
    git archive c5299e0 lvisctl | tar -x -C /tmp/base   # an earlier lvisctl, timed in the same rounds:
    .venv/bin/python benchmarks/eval_speed.py --images 5000 --workdir /tmp/evs --only hotcoco \\
        --only "lvisctl evaluate" --repeat 3 --baseline /tmp/base

segm and bbox are timed separately (each evaluator run once per iou type; lvis-api only in the first
round: it is slow). "vs bare hotcoco" is lvisctl's min time over hotcoco's min time in the same run.
lvisctl's kernels are compiled (or loaded from numba's cache) once before the rounds, untimed. Both
evaluators use the machine's cores as they please (hotcoco its Rust threads, lvisctl one thread per
core for the parse and the per-image evaluation): "cores used" is CPU seconds over wall seconds. The
last table (machine, load average, date; best of the rounds) is the one docs/scale.md and the README
carry.

The workload is kept in --workdir and reused; lvis-api's metrics are kept there too, so later runs that
skip it still report the difference. The machine is shared: the load average before each run is printed.

Peers are benchmark-only: ``.venv/bin/pip install --only-binary=:all: faster-coco-eval ultrafast-pycocotools``
(a missing one is reported, not fatal).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def default_categories() -> Path:
    """The real LVIS v1 category table: the one ``data synth`` uses (packaged), else ``<repo>/../shared``."""
    try:
        from lvisctl.data import synth

        path = Path(synth.REAL_CATEGORIES_FILE)
        if path.is_file():
            return path
    except (ImportError, AttributeError):
        pass
    return REPO.parent / "shared" / "data" / "lvis_v1_categories.json"


from lvisctl.evaluation.lvis_metrics import METRIC_KEYS as KEYS  # noqa: E402  (the official key names)

# faster-coco-eval's names for the official keys.
FCE_NAMES = {
    "AP": "AP_all",
    "AP50": "AP_50",
    "AP75": "AP_75",
    "APs": "AP_small",
    "APm": "AP_medium",
    "APl": "AP_large",
    "AR@300": "AR_all",
    "ARs@300": "AR_small",
    "ARm@300": "AR_medium",
    "ARl@300": "AR_large",
}
# Each runner: python code run as `python -c CODE GT RESULTS OUT`, leaving the 13 numbers in OUT.
RUNNERS: dict[str, tuple[str | None, str]] = {
    "lvisctl evaluate": (None, ""),  # runs the CLI itself, see command_for()
    "lvis-api 0.5.3": (
        "tests.helpers.lvis_reference",
        "import sys, json\nfrom tests.helpers.lvis_reference import lvis_api_metrics\n"  # cwd is the repo
        "json.dump(lvis_api_metrics(sys.argv[1], sys.argv[2], sys.argv[4]), open(sys.argv[3], 'w'))",
    ),
    "hotcoco 1.3": (
        "hotcoco",
        "import sys, json, os, hotcoco\n"
        "g = hotcoco.COCO(sys.argv[1]); d = hotcoco.LVISResults(g, sys.argv[2], max_dets=300)\n"
        "ev = hotcoco.LVISEval(g, d, sys.argv[4]); ev.evaluate(); ev.accumulate()\n"
        "fd = os.dup(1); os.dup2(os.open(os.devnull, os.O_WRONLY), 1); ev.summarize(); os.dup2(fd, 1)\n"
        "json.dump(ev.get_results(), open(sys.argv[3], 'w'))",
    ),
    "faster-coco-eval": (
        "faster_coco_eval",
        "import sys, json\nfrom faster_coco_eval import COCO, COCOeval_faster\n"
        "g = COCO(sys.argv[1]); d = g.loadRes(sys.argv[2])\n"
        "ev = COCOeval_faster(g, d, sys.argv[4], lvis_style=True, print_function=lambda *a: None)\n"
        "ev.params.maxDets = [300]; ev.evaluate(); ev.accumulate(); ev.summarize()\n"
        "json.dump(ev.stats_as_dict, open(sys.argv[3], 'w'))",
    ),
    "ultrafast-pycocotools": (
        "ultrafast_pycocotools",
        "import sys, json\nfrom ultrafast_pycocotools.coco import COCO\n"
        "from ultrafast_pycocotools.cocoeval import COCOeval\n"
        "g = COCO(sys.argv[1]); d = g.loadRes(sys.argv[2])\n"
        "ev = COCOeval(g, d, sys.argv[4], lvis_style=True, print_function=lambda *a: None)\n"
        "ev.evaluate(); ev.accumulate(); ev.summarize()\n"
        "json.dump(ev.stats_as_dict, open(sys.argv[3], 'w'))",
    ),
}


def _polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float) -> list[float]:
    """An irregular 8-gon around (cx, cy), flattened as COCO polygons are."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
    radius = rng.uniform(0.6, 1.0, 8)
    xs = cx + rx * radius * np.cos(angles)
    ys = cy + ry * radius * np.sin(angles)
    return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def make_workload(
    num_images: int, dets_per_image: int = 300, seed: int = 0, categories_path: Path | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return ``(gt_dataset, results)``."""
    rng = np.random.default_rng(seed)
    cats = json.loads(Path(categories_path or default_categories()).read_text())
    cat_ids = np.array([c["id"] for c in cats])
    # Frequent categories appear more often, as in LVIS.
    weight = np.array([{"r": 1.0, "c": 4.0, "f": 20.0}[c["frequency"]] for c in cats])
    weight /= weight.sum()
    images, anns, results = [], [], []
    for img_id in range(1, num_images + 1):
        h, w = int(rng.integers(360, 641)), int(rng.integers(480, 641))
        pos = rng.choice(cat_ids, size=int(rng.integers(1, 6)), replace=False, p=weight)
        neg = rng.choice(np.setdiff1d(cat_ids, pos), size=10, replace=False)
        not_exh = pos[: int(rng.integers(0, 2))]
        images.append(
            {
                "id": img_id,
                "height": h,
                "width": w,
                "coco_url": f"http://images.cocodataset.org/val2017/{img_id:012d}.jpg",
                "neg_category_ids": sorted(int(c) for c in neg),
                "not_exhaustive_category_ids": sorted(int(c) for c in not_exh),
            }
        )
        objects = []
        for _ in range(int(rng.integers(4, 21))):
            cat = int(rng.choice(pos))
            rx, ry = rng.uniform(4, w / 4), rng.uniform(4, h / 4)
            cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
            poly = _polygon(rng, cx, cy, rx, ry)
            rle = mask_utils.frPyObjects([poly], h, w)[0]
            bbox = mask_utils.toBbox(rle).tolist()
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": cat,
                    "segmentation": [poly],
                    "area": float(mask_utils.area(rle)),
                    "bbox": bbox,
                }
            )
            objects.append((cat, cx, cy, rx, ry))
        results.extend(_detections(rng, img_id, h, w, objects, neg, cat_ids, dets_per_image))
    dataset = {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}
    return dataset, results


def _detections(rng, img_id, h, w, objects, neg, cat_ids, n) -> list[dict[str, Any]]:
    polys, labels = [], []
    for i in range(n):
        kind = i % 3
        if kind == 0 and objects:  # near a GT object: TP or a near miss
            cat, cx, cy, rx, ry = objects[int(rng.integers(len(objects)))]
            s = rng.uniform(0.7, 1.3)
            cx, cy = cx + rng.normal(0, rx * 0.15), cy + rng.normal(0, ry * 0.15)
            rx, ry = rx * s, ry * s
        else:  # a negative category (a real false positive) or an unverified one (ignored)
            cat = int(rng.choice(neg)) if kind == 1 else int(rng.choice(cat_ids))
            rx, ry = rng.uniform(4, w / 4), rng.uniform(4, h / 4)
            cx, cy = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry)
        polys.append(_polygon(rng, cx, cy, rx, ry))
        labels.append(cat)
    rles = mask_utils.frPyObjects(polys, h, w)
    boxes = mask_utils.toBbox(rles)
    scores = rng.uniform(0.001, 1.0, n)
    out = []
    for rle, box, cat, score in zip(rles, boxes, labels, scores, strict=True):
        out.append(
            {
                "image_id": img_id,
                "category_id": int(cat),
                "bbox": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            }
        )
    return out


# lvisctl's opt-in metrics, timed as whole ``evaluate`` runs (segm + the extra metric).
EXTRA_RUNNERS = {
    "lvisctl evaluate --metrics boundary": "boundary",
    "lvisctl evaluate --metrics fixed": "fixed",
}


BASELINE = "lvisctl evaluate (baseline)"  # another checkout's lvisctl (--baseline DIR): before / after
BASELINE_DIR: Path | None = None


def command_for(name: str, gt: Path, results: Path, out: Path, iou_type: str = "segm") -> list[str] | None:
    py = sys.executable
    args = [
        "evaluate",
        str(results),
        "--gt",
        str(gt),
        "--iou-type",
        iou_type,
        "--out",
        str(out),
        "--overwrite",
    ]
    if name == "lvisctl evaluate" or name in EXTRA_RUNNERS:
        extra = ["--metrics", EXTRA_RUNNERS[name]] if name in EXTRA_RUNNERS else []
        return [py, "-m", "lvisctl", *args, *extra]
    if name == BASELINE:
        code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from lvisctl.cli.app import main; "
        code += "sys.argv[0] = 'lvisctl'; main()"
        return [py, "-c", code, str(BASELINE_DIR), *args]
    module, code = RUNNERS[name]
    if subprocess.run([py, "-c", f"import {module}"], cwd=REPO, capture_output=True).returncode != 0:
        return None
    return [py, "-c", code, str(gt), str(results), str(out), iou_type]


def run_one(cmd: list[str]) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in GB, stderr tail, CPU seconds) of one subprocess, measured with wait4.

    The CPU seconds (user + system, the subprocess and the children it waited for, e.g. lvisctl's screen)
    are the fairer comparison on a shared machine, where a side process gets no free core."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err[-800:]}")
    return wall, usage.ru_maxrss / 1024**2, err, usage.ru_utime + usage.ru_stime


def strip_boxes(results: Path, out: Path) -> None:
    """The segm-only variant of a (compact) results file: what tta-infer's ``<stem>.segm.json`` holds.

    lvis-api and the peers then take mask areas for the segm area ranges (more work for them).
    """
    raw = results.read_bytes()
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(re.sub(rb'"bbox":\[[^\]]*\],', b"", raw))
    tmp.replace(out)


def timing_rounds(names, gt, results, work, repeat, iou_type="segm", once=()) -> dict[str, dict[str, Any]]:
    """Each evaluator ``repeat`` times, interleaved (one round = every evaluator once), each run in its own
    subprocess; wall times, peak RSS, the load average around each run, and the metrics of the last run.
    Evaluators in ``once`` (lvis-api: minutes) run in the first round only."""
    rows: dict[str, dict[str, Any]] = {}
    for r in range(repeat):
        for name in names:
            if r and name in once:
                continue
            tag = name.replace(" ", "_").replace("-", "")
            out = work / f"metrics_{tag}_{iou_type}_{results.stem}.json"
            cmd = command_for(name, gt, results, out, iou_type)
            if cmd is None:
                if r == 0:
                    print(f"{name}: not installed; see the header of this script for the pip command")
                continue
            load = os.getloadavg()[0]
            wall, rss, _, cpu = run_one(cmd)
            metrics = json.loads(out.read_text())
            metrics = metrics.get(iou_type, metrics)
            metrics = {k: metrics[FCE_NAMES.get(k, k) if "faster" in name else k] for k in KEYS}
            row = rows.setdefault(name, {"walls": [], "rss": 0.0, "loads": [], "cpus": []})
            row["walls"].append(wall)
            row["cpus"].append(cpu)
            row["loads"].append(load)
            row["rss"] = max(row["rss"], rss)
            row["metrics"] = metrics
            print(
                f"  {iou_type} {name:<36} {wall:8.1f} s  {cpu:8.1f} CPU s  {rss:6.2f} GB  (load {load:.2f})",
                flush=True,
            )
    return rows


def machine_line() -> str:
    """The machine, its load and the date: timings on a shared machine mean little without them."""
    import datetime
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(
            line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
        )
        mem_gb = f"{int(mem.split()[1]) / 1024**2:.0f} GiB"
    except (OSError, StopIteration):
        mem_gb = "?"
    loads = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"machine: {model}, {os.cpu_count()} CPUs, {mem_gb}; load average (1/5/15 min) {loads}; {date}"


def warm_up() -> None:
    """Compile (or load) lvisctl's numba kernels once, untimed, as `make install` does."""
    subprocess.run([sys.executable, "-m", "lvisctl.evaluation.warmup"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def prepare_workload(images: int, args) -> Path:
    """Make (or reuse) the workload of ``images`` images in the work dir; returns the results file."""
    work = args.workdir
    gt = work / f"gt_{images}_{args.dets}_{args.seed}.json"
    results = work / f"results_{images}_{args.dets}_{args.seed}.json"
    t = time.perf_counter()
    if not (gt.is_file() and results.is_file()):  # the workload takes ~20 s per 1,000 images to make
        if not args.generate_only:
            # In a child process: the evaluators are forked from this one, and a parent that held the
            # workload (~10 GB at 19,809 images) would show up in every child's peak RSS.
            cmd = [sys.executable, __file__, "--generate-only", "--workdir", str(work), "--images",
                   str(images), "--dets", str(args.dets), "--seed", str(args.seed)]  # fmt: skip
            cmd += ["--categories", str(args.categories)] if args.categories else []
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        else:
            dataset, dets = make_workload(images, args.dets, args.seed, args.categories)
            gt.write_text(json.dumps(dataset))
            tmp = results.with_suffix(".tmp")
            tmp.write_text(json.dumps(dets, separators=(",", ":")))
            tmp.replace(results)
            del dataset, dets
    if args.no_bbox:
        segm_only = results.with_name(results.stem + "_nobbox.json")
        if not segm_only.is_file():
            strip_boxes(results, segm_only)
        results = segm_only
    size_mb = results.stat().st_size / 1e6
    took = time.perf_counter() - t
    print(
        f"workload: {images} images x {args.dets} dets, {size_mb:.0f} MB results "
        f"({'no bbox' if args.no_bbox else 'with bbox'}), ready in {took:.0f} s; {os.cpu_count()} CPUs"
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="5000", help="images per workload; a comma list runs each size")
    ap.add_argument("--dets", type=int, default=300, help="detections per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the workload here (default: a temp dir)")
    ap.add_argument("--skip", action="append", default=[], help="runner to skip (repeatable), e.g. lvis-api")
    ap.add_argument("--only", action="append", default=[], help="run only these runners (repeatable)")
    ap.add_argument("--repeat", type=int, default=1, help="timing rounds (interleaved)")
    ap.add_argument("--no-bbox", action="store_true", help="segm-only results (tta-infer's .segm.json)")
    ap.add_argument("--generate-only", action="store_true", help="make the workload in --workdir and stop")
    ap.add_argument("--categories", type=Path, default=None, help="LVIS v1 category table json")
    ap.add_argument("--iou-types", default="segm,bbox", help="comma-separated: segm, bbox")
    ap.add_argument(
        "--extras", default="", help="also time lvisctl's --metrics, comma-separated: boundary,fixed"
    )
    ap.add_argument("--quick", action="store_true", help="100 images, lvisctl and hotcoco only, 2 rounds")
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also time the lvisctl of another checkout (a directory holding lvisctl/), e.g. "
        "`git archive <rev> lvisctl | tar -x -C /tmp/base`: before / after in the same rounds",
    )
    args = ap.parse_args()
    global BASELINE_DIR
    BASELINE_DIR = args.baseline.resolve() if args.baseline else None
    if args.quick:
        args.images, args.repeat = "100", 2
        args.only = args.only or ["hotcoco", "lvisctl"]
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lvis_eval_speed_"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(v) for v in str(args.images).split(",") if v.strip()]
    files = {n: prepare_workload(n, args) for n in sizes}
    if args.generate_only:
        return
    names = [n for n in RUNNERS if not any(s in n for s in args.skip)]
    names = [n for n in names if not args.only or any(o in n for o in args.only)]
    if BASELINE_DIR is not None:
        names.insert(names.index("lvisctl evaluate") + 1 if "lvisctl evaluate" in names else 0, BASELINE)
    if any("lvisctl" in n for n in names):
        warm_up()
    print(machine_line(), flush=True)
    summary: list[str] = []
    for n, results in files.items():
        args.images = n
        gt = args.workdir / f"gt_{n}_{args.dets}_{args.seed}.json"
        for iou_type in args.iou_types.split(","):
            if iou_type == "bbox" and args.no_bbox:
                continue
            names_t = names
            if iou_type == "segm" and args.extras:
                names_t = names + [k for k, e in EXTRA_RUNNERS.items() if e in args.extras.split(",")]
            once = ("lvis-api 0.5.3",)
            rows = timing_rounds(names_t, gt, results, args.workdir, args.repeat, iou_type, once=once)
            report(rows, args.workdir, results, iou_type, args)
            summary += summary_rows(rows, n, iou_type)
    print(f"\n{machine_line()}")
    print(f"\n| images | iou type | evaluator | wall s, best of {args.repeat} | CPU s (best) | cores used "
          "(CPU / wall) | vs bare hotcoco (wall) | load average during the runs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(summary))


def summary_rows(rows: dict[str, dict[str, Any]], images: int, iou_type: str) -> list[str]:
    """The README's rows: best wall of the interleaved rounds, its CPU seconds, the ratio to hotcoco."""
    base = min(rows["hotcoco 1.3"]["walls"]) if "hotcoco 1.3" in rows else None
    out = []
    for name, row in rows.items():
        k = int(np.argmin(row["walls"]))
        wall, cpu = row["walls"][k], row["cpus"][k]
        ratio = f"{wall / base:.2f}x" if base else "n/a"
        loads = f"{min(row['loads']):.1f}-{max(row['loads']):.1f}"
        cells = [f"{images:,}", iou_type, name, f"{wall:.1f}", f"{cpu:.1f}", f"{cpu / wall:.2f}"]
        cells += [ratio, loads]
        out.append("| " + " | ".join(cells) + " |")
    return out


def report(rows: dict[str, dict[str, Any]], work: Path, results: Path, iou_type: str, args) -> None:
    """The table of one iou type; lvis-api's metrics are kept and reused by later runs that skip it."""
    ref_path = work / f"reference_lvis-api_{iou_type}_{results.stem}.json"
    if "lvis-api 0.5.3" in rows:
        ref_path.write_text(json.dumps(rows["lvis-api 0.5.3"]))
    ref_row = json.loads(ref_path.read_text()) if ref_path.is_file() else None
    ref = ref_row["metrics"] if ref_row else None
    base = min(rows["hotcoco 1.3"]["walls"]) if "hotcoco 1.3" in rows else None
    base_cpu = min(rows["hotcoco 1.3"].get("cpus") or [0]) if "hotcoco 1.3" in rows else 0
    print(
        f"\n| evaluator | wall (s), min / median of runs | vs bare hotcoco | CPU s (min) | CPU vs hotcoco | "
        "peak RSS (GB) | load avg | "
        f"max abs diff vs lvis-api | ({args.images} images x {args.dets} dets, {iou_type}, "
        f"{'no bbox' if args.no_bbox else 'file with bbox'}, {os.cpu_count()} CPUs)"
    )
    print("|---|---|---|---|---|---|---|---|")
    if ref_row and "lvis-api 0.5.3" not in rows:
        rows = {"lvis-api 0.5.3 (earlier run)": ref_row, **rows}
    for name, row in rows.items():
        extra = name in EXTRA_RUNNERS  # its numbers are segm's; the extra metric is timed, not compared
        diff = "n/a" if ref is None else f"{max(abs(row['metrics'][k] - ref[k]) for k in KEYS):.1e}"
        walls = row["walls"]
        loads = ", ".join(f"{x:.1f}" for x in row["loads"])
        wall = f"{min(walls):.1f} / {statistics.median(walls):.1f}"
        ratio = f"{min(walls) / base:.2f}x" if base else "n/a"
        cpu = min(row.get("cpus") or [float("nan")])
        cpu_ratio = f"{cpu / base_cpu:.2f}x" if base_cpu else "n/a"
        diff += " (segm part)" if extra else ""
        print(
            f"| {name} | {wall} | {ratio} | {cpu:.1f} | {cpu_ratio} | {row['rss']:.2f} | {loads} | {diff} |"
        )


if __name__ == "__main__":
    main()
