"""mmdet's ``LVISMetric`` (lvis-api) vs ``LvisctlLVISMetric`` (lvisctl's evaluator) on the same predictions.

Needs the mmdet extra (``make test-integrations`` installs it). The workload is eval_speed's synthetic LVIS
split with the real 1,203 LVIS v1 categories (from lvisctl's bundled table), turned into mmdet data samples
(xyxy boxes, contiguous labels, binary masks). Each metric runs in its own subprocess; the table gives the
time of ``process`` + ``evaluate`` (mask decoding excluded), the process's peak RSS, and the largest
difference of the bbox/segm AP numbers between the two.

    .venv/bin/python benchmarks/mmdet_metric.py --quick                  # 40 images, 100 dets each
    .venv/bin/python benchmarks/mmdet_metric.py --images 5000            # LVIS-val size (lvis-api: minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NAMES = ("LVISMetric", "LvisctlLVISMetric")
KEYS = ("bbox_AP", "bbox_AP50", "bbox_APr", "segm_AP", "segm_APr", "segm_APf")


def make_files(work: Path, images: int, dets: int) -> tuple[Path, Path]:
    from benchmarks.eval_speed import make_workload
    from lvisctl.checkpoint_import.categories import LVIS_V1_TABLE

    rows = json.loads(LVIS_V1_TABLE.read_text())["rows"]
    cats = [{"id": r[0], "name": r[1], "frequency": r[2], "image_count": r[3], "synset": r[1]} for r in rows]
    cats_path = work / "categories.json"
    cats_path.write_text(json.dumps(cats))
    gt, results = make_workload(images, dets, categories_path=cats_path)
    gt_path, res_path = work / "gt.json", work / "results.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


def worker(name: str, gt: Path, results: Path, out: Path) -> None:
    """Feed the predictions image by image to metric ``name``; time only the metric's own work."""
    from collections import defaultdict

    import pycocotools.mask as mask_utils
    import torch
    from mmdet.registry import METRICS

    import lvisctl.integrations.mmdet  # noqa: F401
    import tests.helpers.lvis_reference  # noqa: F401  (lvis-api needs the np.float shim on numpy >= 1.24)

    cat_ids = sorted(c["id"] for c in json.loads(gt.read_text())["categories"])
    index = {c: i for i, c in enumerate(cat_ids)}
    by_image = defaultdict(list)
    for rec in json.loads(results.read_text()):
        by_image[rec["image_id"]].append(rec)
    metric = METRICS.build(dict(type=name, ann_file=str(gt), metric=["bbox", "segm"]))
    metric.dataset_meta = {"classes": [str(c) for c in cat_ids]}
    spent = 0.0
    for image_id, recs in by_image.items():
        h, w = recs[0]["segmentation"]["size"]
        masks = torch.from_numpy(mask_utils.decode([r["segmentation"] for r in recs])).permute(2, 0, 1).bool()
        boxes = torch.tensor([r["bbox"] for r in recs])
        boxes[:, 2:] += boxes[:, :2]
        pred = {
            "bboxes": boxes,
            "scores": torch.tensor([r["score"] for r in recs]),
            "labels": torch.tensor([index[r["category_id"]] for r in recs]),
            "masks": masks,
        }
        start = time.perf_counter()
        metric.process({}, [{"img_id": image_id, "ori_shape": (h, w), "pred_instances": pred}])
        spent += time.perf_counter() - start
    start = time.perf_counter()
    numbers = metric.evaluate(len(by_image))
    spent += time.perf_counter() - start
    out.write_text(json.dumps({"seconds": spent, "metrics": numbers}))


def run(name: str, gt: Path, results: Path, work: Path) -> dict:
    out = work / f"{name}.json"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--gt",
        str(gt),
        "--results",
        str(results),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed: {err[-1500:]}")
    return {**json.loads(out.read_text()), "rss_gb": usage.ru_maxrss / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets", type=int, default=300, help="detections per image")
    parser.add_argument("--quick", action="store_true", help="40 images, 100 detections each")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.gt, args.results, args.out)
        return
    images, dets = (40, 100) if args.quick else (args.images, args.dets)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmdet-metric-"))
    work.mkdir(parents=True, exist_ok=True)
    gt, results = make_files(work, images, dets)
    rows = {name: run(name, gt, results, work) for name in NAMES}
    ref = rows["LVISMetric"]["metrics"]
    print(f"{images} images x {dets} detections, bbox + segm (load average {os.getloadavg()[0]:.1f})")
    print(f"{'metric':<20} {'seconds':>8} {'peak RSS GB':>12} {'max |diff| vs LVISMetric':>26}")
    for name, row in rows.items():
        diff = max(abs(row["metrics"][f"lvis/{k}"] - ref[f"lvis/{k}"]) for k in KEYS)
        print(f"{name:<20} {row['seconds']:>8.2f} {row['rss_gb']:>12.2f} {diff:>26.2e}")


if __name__ == "__main__":
    main()
