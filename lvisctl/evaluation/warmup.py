"""Compile the evaluator's numba kernels once, at install time (``make install`` runs this module).

The first ``evaluate`` after an install would otherwise spend seconds compiling them (6.6 s against 2.1-2.8 s
warm at 2,000 images; with ``--metrics boundary`` 13.7 s against 5.2 s). Running the real ``evaluate`` path
(the results screen, Boundary AP and Fixed AP) on two tiny hand-made images compiles every kernel with the
argument types a real run uses, and numba caches the machine code on disk (see ``numba_cache``).
Both routes of ``evaluate`` run: the usual one (``fast_eval``) and the extra metrics' (hotcoco).

    python -m lvisctl.evaluation.warmup
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 32


def _rle(x: int, y: int, w: int, h: int) -> dict[str, Any]:
    import pycocotools.mask as mask_utils

    m = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
    m[y : y + h, x : x + w] = 1
    return {"size": [SIZE, SIZE], "counts": mask_utils.encode(m)["counts"].decode("ascii")}


def tiny_case() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Two images, two categories, one rectangle each; detections that hit and miss them."""
    cats = [
        {"id": c, "name": f"c{c}", "synset": f"c{c}.n.01", "frequency": f} for c, f in ((1, "f"), (2, "r"))
    ]
    images, anns, dets = [], [], []
    for img in (1, 2):
        images.append({"id": img, "height": SIZE, "width": SIZE, "neg_category_ids": [2],
                       "not_exhaustive_category_ids": [],
                       "coco_url": f"http://images.cocodataset.org/val2017/{img:012d}.jpg"})  # fmt: skip
        x, y, w, h = 4 * img, 5, 12, 10
        anns.append({"id": img, "image_id": img, "category_id": 1, "area": float(w * h),
                     "bbox": [float(x), float(y), float(w), float(h)],
                     "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})  # fmt: skip
        for dx, score in ((0, 0.9), (3, 0.6), (9, 0.3)):
            box = [float(x + dx), float(y), float(w), float(h)]
            dets.append({"image_id": img, "category_id": 1, "score": score, "bbox": box,
                         "segmentation": _rle(x + dx, y, w, h)})  # fmt: skip
        dets.append({"image_id": img, "category_id": 2, "score": 0.5, "segmentation": _rle(1, 1, 6, 6),
                     "bbox": [1.0, 1.0, 6.0, 6.0]})  # fmt: skip
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}, dets


def warm_up() -> float:
    """Evaluate the tiny case as ``evaluate --metrics boundary,fixed`` does (with and without ``bbox``)."""
    from lvisctl.evaluation.native_output import quiet_native_output
    from lvisctl.evaluation.pipeline import run_evaluate
    from lvisctl.evaluation.results_io import rle_run_totals

    start = time.perf_counter()
    gt, dets = tiny_case()
    # the in-memory results checker's RLE kernel (ensemble inputs, small files): not on evaluate's path
    rle_run_totals([d["segmentation"]["counts"] for d in dets])
    with tempfile.TemporaryDirectory(prefix="lvisctl-warmup-") as tmp:
        gt_path = Path(tmp, "gt.json")
        gt_path.write_text(json.dumps(gt))
        for name, records in (
            ("with_bbox", dets),
            ("no_bbox", [{k: v for k, v in d.items() if k != "bbox"} for d in dets]),
        ):
            results = Path(tmp, f"{name}.json")
            results.write_text(json.dumps(records))
            types = ("segm", "bbox") if name == "with_bbox" else ("segm",)
            with quiet_native_output():
                # the usual route (fast_eval: strict reader + per-image kernels), then the extra metrics'
                outcomes = [
                    run_evaluate(results, gt=gt_path, iou_types=types),
                    run_evaluate(results, gt=gt_path, extras=("boundary", "fixed")),
                ]
                if name == "with_bbox":  # box-only: the GT's boxes come from the compiled GT reader
                    box = run_evaluate(results, gt=gt_path, iou_types=("bbox",))
                    if not box.metrics["bbox"]["AP"] > 0:
                        raise RuntimeError(f"warm-up box evaluation scored nothing: {box.metrics['bbox']}")
            for outcome in outcomes:
                if not outcome.metrics["segm"]["AP"] > 0:  # the case is built to score: else a bug
                    raise RuntimeError(f"warm-up evaluation scored nothing: {outcome.metrics['segm']}")
    return time.perf_counter() - start


def main() -> int:
    seconds = warm_up()
    print(f"lvisctl: evaluation kernels compiled and cached ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
