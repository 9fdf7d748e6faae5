"""How fast, and in how much memory, ``pseudolabel openimages`` plans its image list (paper: 1.7 M images).

Planning is everything before the model runs that does not need image content: reading the image list
(Open Images' CSV, ``ImageID`` -> ``<root>/<ImageID>.jpg``) or walking a folder, and giving every image
its stable id (:func:`lvisctl.data.image_sources.plan_source`). It is measured on generated inputs
without image content: a CSV of 1.7 M Open-Images-style ids (16 hex digits) and a folder tree of empty
files. The header pass that follows (sizes from the file headers, threads) needs real files: it is
measured on small real JPEGs and reported per image. Every measurement runs in a fresh process
(wall and CPU seconds, as the CPU time is what a loaded machine does not distort; peak RSS, with the
interpreter and lvisctl's image_sources imported as the baseline).

    python benchmarks/pseudolabel_plan.py              # 1.7 M CSV rows, 100k empty files, 2,000 JPEGs
    python benchmarks/pseudolabel_plan.py --quick      # 100k rows, 10k files, 300 JPEGs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from lvisctl.data import image_sources as s
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t, c = time.perf_counter(), time.process_time()
kind, source = {kind!r}, Path({source!r})
if kind == "csv":
    n = sum(1 for _ in s.plan_source(source.parent / "images", image_list=source)[0])
elif kind == "folder":
    n = sum(1 for _ in s.plan_source(source)[0])
else:  # headers + the streamed image-info json
    info = s.image_info_for(source, out_dir=source.parent / "out", categories=lambda: [], workers={workers})
    n = info.num_images
secs, cpu = time.perf_counter() - t, time.process_time() - c
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"n": n, "seconds": secs, "cpu": cpu, "base_mb": base / 1024, "peak_mb": peak / 1024}}))
"""


def measure(kind: str, source: Path, workers: int = 8) -> dict:
    code = CHILD.format(repo=str(REPO), kind=kind, source=str(source), workers=workers)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_csv(path: Path, n: int) -> None:
    """Open Images' image-list layout: ImageID (16 hex digits) first, then other columns."""
    (path.parent / "images").mkdir(exist_ok=True)
    with open(path, "w") as fh:
        fh.write("ImageID,Subset,OriginalURL,OriginalLandingURL,License\n")
        for i in range(n):
            image_id = f"{(i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF:016x}"
            fh.write(f"{image_id},train,https://farm.example/{image_id}.jpg,,by-2.0\n")


def write_folder(root: Path, n: int, per_dir: int = 1000) -> None:
    """``n`` empty ``.jpg`` files in sub-folders of ``per_dir`` (no content: listing only)."""
    for i in range(n):
        d = root / f"{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        (d / f"{i:08d}.jpg").touch()


def write_jpegs(root: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = (rng.random((480, 640, 3)) * 255).astype("uint8")  # Open Images' typical 1024 px is similar
    Image.fromarray(pixels).save(root / "0.jpg", quality=85)
    data = (root / "0.jpg").read_bytes()
    for i in range(1, n):
        (root / f"{i:06d}.jpg").write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_700_000, help="CSV rows (Open Images train: 1.7 M)")
    parser.add_argument("--files", type=int, default=100_000, help="empty files in the folder tree")
    parser.add_argument("--jpegs", type=int, default=2_000, help="real JPEGs for the header pass")
    parser.add_argument("--workers", type=int, default=8, help="header-reading threads")
    parser.add_argument("--quick", action="store_true", help="100k rows, 10k files, 300 JPEGs")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.files, args.jpegs = 100_000, 10_000, 300
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_csv(tmp / "ids.csv", args.entries)
        rows.append(("CSV image list (plan)", measure("csv", tmp / "ids.csv")))
        write_folder(tmp / "tree", args.files)
        rows.append(("folder walk (plan)", measure("folder", tmp / "tree")))
        write_jpegs(tmp / "jpegs", args.jpegs)
        rows.append(
            (
                f"headers + image-info json ({args.workers} threads)",
                measure("headers", tmp / "jpegs", args.workers),
            )
        )
    print(
        "| step | images | wall (s) | CPU (s) | images/CPU-s | peak RSS (MB) | over base (MB) | bytes/image |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        extra = r["peak_mb"] - r["base_mb"]
        print(
            f"| {name} | {r['n']:,} | {r['seconds']:.2f} | {r['cpu']:.2f} | "
            f"{r['n'] / max(r['cpu'], 1e-9):,.0f} | {r['peak_mb']:.0f} | {extra:.0f} | "
            f"{extra * 2**20 / max(r['n'], 1):.0f} |"
        )


if __name__ == "__main__":
    main()
