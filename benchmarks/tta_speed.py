"""Speed of the TTA merge and of ``lvisctl ensemble`` at LVIS sizes (synthetic detections, CPU).

Merge: one image's candidates from 6 scales x 2 flips x 300 detections (3,600 boxes) over 1,203 classes,
laid out like a detector's output: ~30 objects, each detected in every pass with some jitter and with
~10 class hypotheses drawn from a long-tailed class distribution. Timed per image:

* lvisctl ``soft_nms`` (class-wise, vectorised) on all 3,600 boxes;
* ensemble-boxes ``soft_nms`` (a Python loop per class) on the same boxes, normalised to [0, 1];
* torchvision ``batched_nms`` (plain class-wise NMS, the floor);
* the whole paper merge of boxes (valid range, rare boost, NMS 0.7, Soft-NMS, top 300) without masks.

Ensemble: ``lvisctl ensemble`` of two results files with 300 detections per image at 480 x 640
(WBF + mask vote + RLE decode / encode), end to end, images per CPU second.

Demo model (``--run-dir``, a ``lvisctl demo`` run: its stage-2 model on its val images): paper-mode TTA
(6 scales x flip = 12 passes, the ablation's demo scales) and the plain multi-scale test, before (the code
of ``--base``, e.g. ``git worktree add ../base <commit>``) and after (this tree), CPU ms per image
(predict + encode, 1 thread, the best of ``--repeats`` runs per image, the two trees interleaved), mask AP
and box AP on the same images, and how many of the paper-mode masks are identical.

    .venv/bin/python benchmarks/tta_speed.py            # 20 merge images, 10 ensemble images
    .venv/bin/python benchmarks/tta_speed.py --quick    # 5 and 4
    .venv/bin/python benchmarks/tta_speed.py --run-dir demo-run --base ../lvisctl-base --images 50
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
if "--child" not in sys.argv:  # a child imports lvisctl from the tree it measures (--tree)
    sys.path.insert(0, str(REPO))

NUM_CLASSES = 1203
H, W = 480, 640


def candidates(rng: np.random.Generator, passes: int = 12, per_pass: int = 300):
    """One image's TTA candidates: boxes [N, 4] in pixels, scores, labels, pass scale index."""
    objects = 30
    centre = rng.random((objects, 2)) * [W, H]
    size = np.exp(rng.uniform(np.log(8), np.log(300), (objects, 2)))
    class_p = 1.0 / np.arange(1, NUM_CLASSES + 1) ** 0.8  # long-tailed
    class_p /= class_p.sum()
    hypotheses = [rng.choice(NUM_CLASSES, 10, replace=False, p=class_p) + 1 for _ in range(objects)]
    boxes, scores, labels, scale = [], [], [], []
    for p in range(passes):
        obj = rng.integers(0, objects, per_pass)
        jitter = rng.normal(0, 0.08, (per_pass, 4)) * np.repeat(size[obj], 2, axis=1)
        c, s = centre[obj], size[obj]
        b = np.concatenate([c - s / 2, c + s / 2], axis=1) + jitter
        b[:, 0::2] = b[:, 0::2].clip(0, W)
        b[:, 1::2] = b[:, 1::2].clip(0, H)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        boxes.append(b)
        scores.append(rng.beta(0.6, 3, per_pass))
        labels.append(np.array([hypotheses[o][rng.integers(0, 10)] for o in obj]))
        scale.append(np.full(per_pass, p // 2))
    return (
        torch.tensor(np.concatenate(boxes), dtype=torch.float32),
        torch.tensor(np.concatenate(scores), dtype=torch.float32),
        torch.tensor(np.concatenate(labels), dtype=torch.int64),
        np.concatenate(scale),
    )


def timed(fn, repeats: int = 1) -> float:
    """Best CPU seconds of ``repeats`` calls. CPU time, not wall time: everything runs on one thread, and
    CPU time stays meaningful on a machine shared with other jobs (where wall time is not)."""
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def bench_merge(images: int) -> dict[str, float]:
    from ensemble_boxes import soft_nms as eb_soft_nms
    from torchvision.ops import batched_nms

    from lvisctl.inference.tta import TTASettings, merge_boxes, soft_nms

    rng = np.random.default_rng(0)
    settings = TTASettings()
    boost = torch.ones(NUM_CLASSES + 1)
    boost[1::3] = 1.1
    times: dict[str, list[float]] = {k: [] for k in ("lvisctl", "ensemble-boxes", "batched_nms", "paper")}
    kept = []
    norm = torch.tensor([W, H, W, H], dtype=torch.float64)
    for _ in range(images):
        boxes, scores, labels, scale = candidates(rng)
        times["lvisctl"].append(timed(lambda: soft_nms(boxes, scores, labels), 2))  # noqa: B023
        nb, ns, nl = (boxes.double() / norm).numpy(), scores.double().numpy(), labels.numpy()
        times["ensemble-boxes"].append(
            timed(lambda: eb_soft_nms([nb], [ns], [nl], method=2, sigma=0.5, thresh=0.001))  # noqa: B023
        )
        times["batched_nms"].append(timed(lambda: batched_nms(boxes, scores, labels, 0.5), 2))  # noqa: B023

        def paper():
            size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # noqa: B023
            lo = torch.tensor([settings.valid_ranges[s][0] for s in scale])  # noqa: B023
            hi = torch.tensor([settings.valid_ranges[s][1] for s in scale])  # noqa: B023
            keep = torch.nonzero((size >= lo) & (size < hi)).flatten()
            boosted = (scores[keep] * boost[labels[keep]]).clamp(max=1)  # noqa: B023
            return merge_boxes(boxes[keep], boosted, labels[keep], settings, merge_iou=0.5, k=300)  # noqa: B023

        times["paper"].append(timed(paper, 2))
        kept.append(len(soft_nms(boxes, scores, labels)[0]))
    out = {k: 1000 * statistics.median(v) for k, v in times.items()}
    out["kept"] = statistics.median(kept)
    out["classes"] = float(len(torch.unique(labels)))
    return out


def results_file(path: Path, images: int, seed: int, dets: int = 300) -> None:
    """A results file pair with ``dets`` detections per image: jittered copies of shared objects."""
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(seed)
    base = np.random.default_rng(99)
    segm, bbox = [], []
    for image_id in range(1, images + 1):
        centre = base.random((60, 2)) * [W, H]
        size = np.exp(base.uniform(np.log(10), np.log(200), (60, 2)))
        labels = base.integers(1, NUM_CLASSES + 1, (60, 5))
        obj = rng.integers(0, 60, dets)
        for k in range(dets):
            c, s = centre[obj[k]], size[obj[k]] * rng.uniform(0.9, 1.1, 2)
            x0, y0 = np.clip(c - s / 2, 0, [W - 2, H - 2]).astype(int)
            x1, y1 = np.clip(c + s / 2, [x0 + 1, y0 + 1], [W, H]).astype(int)
            mask = np.zeros((H, W), np.uint8, order="F")
            mask[y0:y1, x0:x1] = 1
            rle = mask_utils.encode(mask)
            rec = {"image_id": image_id, "category_id": int(labels[obj[k], rng.integers(0, 5)])}
            score = float(rng.beta(0.6, 3))
            segm.append(
                {**rec, "score": score, "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}}
            )
            bbox.append(
                {**rec, "score": score, "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
            )
    path.with_name(path.stem + ".segm.json").write_text(json.dumps(segm))
    path.with_name(path.stem + ".bbox.json").write_text(json.dumps(bbox))


def bench_ensemble(images: int) -> float:
    from lvisctl.inference.ensemble import ensemble_to_run_dir

    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.json", Path(tmp) / "b.json"
        results_file(a, images, 1)
        results_file(b, images, 2)
        ensemble_to_run_dir([a.with_name("a.segm.json"), b.with_name("b.segm.json")], Path(tmp) / "warm.json")
        start = time.process_time()  # CPU time, as for the merge
        ensemble_to_run_dir([a.with_name("a.segm.json"), b.with_name("b.segm.json")], Path(tmp) / "out.json")
        return images / (time.process_time() - start)


# ------------------------------------------------------------------------- the demo model, before / after
# The ablation's demo settings (benchmarks/tta_ablation.py): 128 px images, trained at 112-144 px.
DEMO_PAPER = [
    "inference.tta.mode=paper",
    "inference.tta.scales=[96,112,128,160,192,224]",
    "inference.tta.valid_ranges=[[32,null],[16,null],[0,null],[0,96],[0,64],[0,48]]",
    "inference.tta.mask_box_size=56",
    "inference.tta.max_size=448",
    "inference.tta.flip=true",
]
DEMO_MODES = {
    "paper": DEMO_PAPER,
    "plain": ["inference.tta.mode=plain", "inference.scales=[96,128,160,224]", "inference.max_size=448"],
}


def demo_files(run_dir: Path) -> tuple[Path, Path]:
    """The demo run's val json and its final stage-2 checkpoint (read only)."""
    arts = json.loads((run_dir / "manifest.json").read_text())["artifacts"]
    val = [a for a in arts if a["kind"] == "dataset" and a["meta"].get("split") == "val"][-1]
    finals = [a for a in arts if a["kind"] == "checkpoint" and a["meta"].get("final")]
    top = max(int(a["meta"].get("stage", 0)) for a in finals)
    ckpt = [a for a in finals if int(a["meta"].get("stage", 0)) == top][-1]
    return run_dir / val["path"], run_dir / ckpt["path"]


def demo_image_ids(val: Path, n: int) -> list[int]:
    """``n`` val images: for each category the first image that has it (so r/c/f are all scored), then the
    first others by id (benchmarks/tta_ablation.py's subset)."""
    data = json.loads(val.read_text())
    first: dict[int, int] = {}
    for ann in sorted(data.get("annotations", []), key=lambda a: a["image_id"]):
        first.setdefault(ann["category_id"], ann["image_id"])
    order = sorted(im["id"] for im in data["images"])
    return list(dict.fromkeys([*sorted(set(first.values())), *order]))[:n]


def child_run(tree: Path, run_dir: Path, n: int, mode: str, out: Path) -> None:
    """One measured run in ``tree``'s code: CPU ms per image (predict + encode) and the records."""
    sys.path.insert(0, str(tree.resolve()))
    from lvisctl.data.image_io import read_image_tensor
    from lvisctl.data.lvis import load_lvis
    from lvisctl.engine.checkpoint import load_checkpoint
    from lvisctl.inference.predictor import checkpoint_config, model_from_checkpoint, writing_spares
    from lvisctl.inference.results import detections_to_records

    try:  # the predictor factory moves out of tta.py (issue 24, item 1)
        from lvisctl.inference.tta import predictor_for
    except ImportError:
        from lvisctl.inference.factory import predictor_for  # type: ignore[no-redef]

    val, ckpt_path = demo_files(run_dir)
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    cfg = checkpoint_config(ckpt, DEMO_MODES[mode])
    model, stats, _ = model_from_checkpoint(ckpt, config=cfg)
    predictor = predictor_for(model, stats, cfg, "cpu")
    data = load_lvis(val)
    ids = demo_image_ids(val, n)
    images = [read_image_tensor(data.image_path(i)) for i in ids]
    with writing_spares(predictor):
        predictor.predict(images[0])  # warm-up
        times, records = [], []
        for image_id, image in zip(ids, images, strict=True):
            start = time.process_time()
            recs = detections_to_records(image_id, predictor.predict(image), stats.category_map)
            times.append(1000 * (time.process_time() - start))
            records += recs
    out.write_text(json.dumps({"ms": times, "records": records}))


def demo_ap(val: Path, ids: list[int], records: list[dict], tmp: Path) -> dict[str, float]:
    """Mask AP and box AP (lvisctl's evaluation) of ``records`` on the images ``ids`` of ``val``."""
    from lvisctl.evaluation.lvis_metrics import evaluate_lvis, load_ground_truth, load_results_for_eval
    from lvisctl.inference.results import write_split_results

    data = json.loads(val.read_text())
    keep = set(ids)
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    gt_path = tmp / "gt.json"
    gt_path.write_text(json.dumps(data))
    gt = load_ground_truth(gt_path)
    paths = write_split_results(records, tmp / "res.json")
    out = {}
    for iou in ("segm", "bbox"):
        metrics = evaluate_lvis(load_results_for_eval(paths[iou], gt), gt, (iou,))[iou].metrics
        out[iou] = 100 * float(metrics["AP"])
    return out


def same_masks(before: list[dict], after: list[dict]) -> tuple[float, float]:
    """Share of detections with the same (image, class, box) in the same place, and of those the share
    whose mask is identical."""
    key = [(r["image_id"], r["category_id"], r["bbox"]) for r in before]
    pairs = [(a, b) for a, b, k in zip(after, before, key, strict=False)
             if (a["image_id"], a["category_id"], a["bbox"]) == k]  # fmt: skip
    same = sum(a["segmentation"] == b["segmentation"] for a, b in pairs)
    return len(pairs) / max(len(before), 1), same / max(len(pairs), 1)


def demo_table(run_dir: Path, base: Path | None, n: int, repeats: int) -> None:
    import datetime
    import os
    import platform
    import subprocess

    val, ckpt = demo_files(run_dir)
    ids = demo_image_ids(val, n)
    trees = {"before": base, "after": REPO} if base else {"after": REPO}
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for mode in DEMO_MODES:
            for r in range(repeats if mode == "paper" else 1):  # plain: the same code in both trees
                for name, tree in trees.items():  # interleaved: before, after, before, after, ...
                    out = tmp / f"{mode}_{name}_{r}.json"
                    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(tree).resolve())}
                    subprocess.run(
                        [sys.executable, __file__, "--child", str(out), "--tree", str(tree), "--run-dir",
                         str(run_dir), "--images", str(n), "--mode", mode],
                        check=True, env=env, cwd=tmp,
                    )  # fmt: skip
                    got = json.loads(out.read_text())
                    seen = results.setdefault((mode, name), {"ms": got["ms"], "records": got["records"]})
                    seen["ms"] = [min(a, b) for a, b in zip(seen["ms"], got["ms"], strict=True)]
                    print(f"{mode} {name} run {r + 1}: {statistics.mean(got['ms']):.0f} ms/image", flush=True)
        for (mode, name), res in results.items():
            sub = tmp / f"eval_{mode}_{name}"
            sub.mkdir()
            res["ap"] = demo_ap(val, ids, res["records"], sub)
    table = Table(title=f"TTA on the demo model ({ckpt.name}, {len(ids)} val images; CPU, 1 thread)")
    for col in ("mode", "code", "ms / image", "speed-up", "mask AP", "box AP"):
        table.add_column(col, justify="left" if col in ("mode", "code") else "right")
    for mode in DEMO_MODES:
        ref = results.get((mode, "before"))
        for name in trees:
            res = results[(mode, name)]
            ms = statistics.mean(res["ms"])
            speed = f"{statistics.mean(ref['ms']) / ms:.2f}x" if ref else ""
            table.add_row(
                mode, name, f"{ms:.0f}", speed, f"{res['ap']['segm']:.2f}", f"{res['ap']['bbox']:.2f}"
            )
    Console().print(table)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} CPUs, {when}; paper: best of {repeats} runs per image, plain: 1 run")
    if base:
        for mode in DEMO_MODES:
            before, after = results[(mode, "before")]["records"], results[(mode, "after")]["records"]
            placed, identical = same_masks(before, after)
            print(f"{mode}: records identical: {before == after}; detections in place {100 * placed:.1f}%, "
                  f"of those masks identical {100 * identical:.2f}%")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--run-dir", type=Path, help="a `lvisctl demo` run: TTA speed on its model (no merge)"
    )
    parser.add_argument("--base", type=Path, help="the tree to compare with (default: this one alone)")
    parser.add_argument("--images", type=int, default=50, help="val images of the demo (default 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # output json of one measured run
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        child_run(args.tree, args.run_dir, args.images, args.mode, args.child)
        return
    if args.run_dir:
        demo_table(args.run_dir, args.base, args.images, args.repeats)
        return
    merge = bench_merge(5 if args.quick else 20)
    table = Table(
        title=f"TTA merge per image: 12 passes x 300 = 3,600 boxes, {NUM_CLASSES} classes (CPU, 1 thread)"
    )
    table.add_column("method")
    table.add_column("CPU ms / image", justify="right")
    table.add_row("lvisctl soft_nms (Gaussian, class-wise, vectorised)", f"{merge['lvisctl']:.1f}")
    table.add_row("ensemble-boxes soft_nms (Gaussian)", f"{merge['ensemble-boxes']:.1f}")
    table.add_row("torchvision batched_nms 0.5 (no Soft-NMS)", f"{merge['batched_nms']:.1f}")
    table.add_row("paper merge: range + boost + NMS 0.7 + Soft-NMS + top 300", f"{merge['paper']:.1f}")
    console = Console()
    console.print(table)
    print(
        f"(median over images; ~{merge['classes']:.0f} classes present, {merge['kept']:.0f} kept by Soft-NMS)"
    )
    rate = bench_ensemble(4 if args.quick else 10)
    print(f"lvisctl ensemble, 2 files x 300 detections / image at {W}x{H}, end to end: {rate:.2f} images/s")


if __name__ == "__main__":
    main()
