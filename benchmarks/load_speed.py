"""How fast, and in how much memory, ``load_lvis`` reads an LVIS train file of the real size (1.3 GB).

Writes a synthetic file with the real file's shape (100,170 images, the 1,203 real categories,
~1.27M annotations with polygons, ~1 KB per annotation) and loads it in a fresh process, reporting wall
seconds and peak RSS. For comparison it also measures plain ``json.load`` (what lvis-api and
pycocotools do) on a smaller file and scales it linearly, because at full size it needs >10 GB.

    python benchmarks/load_speed.py                      # 1.3 GB file, json.load baseline on 0.13 GB
    python benchmarks/load_speed.py --size-gb 0.2 --baseline-gb 0.2 --out results.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REAL_IMAGES = 100_170
REAL_ANNOTATIONS = 1_270_141
REAL_SIZE_GB = 1.3
REPO = Path(__file__).resolve().parents[1]


def write_lvis_like(path: Path, size_gb: float, seed: int = 0) -> dict:
    """An LVIS-v1-shaped train file of about ``size_gb``; returns its counts."""
    sys.path.insert(0, str(REPO))
    from lvisctl.data.synth import load_category_table

    rng = np.random.default_rng(seed)
    scale = size_gb / REAL_SIZE_GB
    n_images = max(10, round(REAL_IMAGES * scale))
    n_anns = max(10, round(REAL_ANNOTATIONS * scale))
    cats = load_category_table()
    # a pool of pre-formatted polygons (3-128 points, 2 decimals like LVIS) keeps writing fast; the
    # parser's work per number is the same whether or not polygons repeat
    pool = []
    for _ in range(4096):
        pts = rng.uniform(0, 640, size=2 * int(rng.integers(3, 129)))
        pool.append("[[" + ",".join(f"{v:.2f}" for v in pts) + "]]")
    picks = rng.integers(0, len(pool), size=n_anns)
    img_of = rng.integers(1, n_images + 1, size=n_anns)
    cat_of = rng.integers(0, 600, size=n_anns)  # annotated categories; negatives come from the rest
    with open(path, "w") as fh:
        fh.write('{"info": {"description": "load_speed benchmark"}, "annotations": [')
        for i in range(n_anns):
            box = (
                rng.uniform(1, 300, size=4).round(2).tolist()
                if i % 4096 == 0
                else [10.5, 20.25, 100.0, 50.75]
            )
            fh.write(
                ("," if i else "")
                + f'{{"area": 1234.5, "id": {i + 1}, "segmentation": {pool[picks[i]]}, '
                + f'"image_id": {int(img_of[i])}, "bbox": {json.dumps(box)}, '
                + f'"category_id": {int(cats[cat_of[i]]["id"])}}}'
            )
        fh.write('], "images": [')
        for i in range(1, n_images + 1):
            fh.write(
                ("," if i > 1 else "")
                + json.dumps(
                    {
                        "date_captured": "2013-11-14 11:18:45",
                        "neg_category_ids": [
                            int(cats[c]["id"]) for c in rng.integers(600, len(cats), size=3)
                        ],
                        "id": i,
                        "license": 1,
                        "height": 480,
                        "width": 640,
                        "flickr_url": f"http://farm4.staticflickr.com/{i}.jpg",
                        "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
                        "not_exhaustive_category_ids": [],
                    }
                )
            )
        records = [{**c, "synonyms": [c["name"]], "def": "", "instance_count": 1} for c in cats]
        fh.write('], "licenses": [], "categories": ' + json.dumps(records) + "}")
    return {"images": n_images, "annotations": n_anns, "bytes": path.stat().st_size}


_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
t = time.perf_counter()
if {mode!r} == "load_lvis":
    from lvisctl.data.lvis import load_lvis
    data = load_lvis({path!r})
    n = data.num_annotations
else:
    with open({path!r}) as fh:
        n = len(json.load(fh)["annotations"])
seconds = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime  # robust to other load on the machine, unlike wall seconds
peak = usage.ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak, "annotations": n}}))
"""


def measure(path: Path, mode: str) -> dict:
    """Load ``path`` in a fresh interpreter so peak RSS belongs to this load alone."""
    code = _CHILD.format(repo=str(REPO), path=str(path), mode=mode)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.3, help="size of the file load_lvis reads")
    ap.add_argument(
        "--baseline-gb", type=float, default=0.13, help="size of the json.load baseline file (0: skip)"
    )
    ap.add_argument(
        "--work", type=Path, default=None, help="folder for the generated files (default: a temp dir)"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the results as json here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        results = {}
        big = Path(tmp) / "lvis_like_train.json"
        t = time.perf_counter()
        shape = write_lvis_like(big, args.size_gb)
        took = time.perf_counter() - t
        print(f"wrote {shape['bytes'] / 1e9:.2f} GB ({shape['annotations']} annotations) in {took:.0f}s")
        results["load_lvis"] = {**shape, **measure(big, "load_lvis")}
        print("load_lvis:", results["load_lvis"])
        if args.baseline_gb > 0:
            small = Path(tmp) / "lvis_like_small.json"
            small_shape = write_lvis_like(small, args.baseline_gb, seed=1)
            base = {**small_shape, **measure(small, "json.load")}
            ours = {**small_shape, **measure(small, "load_lvis")}
            factor = shape["bytes"] / small_shape["bytes"]
            base["extrapolated_to_full"] = {
                "seconds": base["seconds"] * factor,
                "cpu_seconds": base["cpu_seconds"] * factor,
                "peak_rss_mb": base["peak_rss_mb"] * factor,
            }
            results["json.load_small"], results["load_lvis_small"] = base, ours
            print("json.load (small):", base)
            print("load_lvis (small):", ours)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
