"""The paper's test-time augmentation (section 3.3), one modification at a time, on synthetic LVIS.

Rows: single scale; plain multi-scale (concatenate + NMS 0.5); the same through the paper merge with
every switch off (only the RoI-mask round trip differs); + horizontal flip; + (1) valid box range
per scale; + (2) rare boost; + (3) NMS 0.7 then Soft-NMS; + (4) mask from the right scale (= the full
``tta-infer --tta paper``). Columns: mask AP, APr/APc/APf, box AP, the gap, mask AP on thin categories
(median mask/box area ratio < 0.25) and on the rest. Each row is the real ``tta-infer`` + ``evaluate``.

    # the demo's stage-2 model (`make demo` made demo-run/):
    .venv/bin/python benchmarks/tta_ablation.py --run-dir demo-run
    # a tiny model trained here in ~2 minutes on 64 px images (the numbers only show it runs):
    .venv/bin/python benchmarks/tta_ablation.py --quick

The test scales bracket the model's training scales (the paper's 400-1400 around an 800 test scale,
shrunk to the synthetic images), and the valid ranges are in original-image pixels for those images.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
LVISCTL = [sys.executable, "-m", "lvisctl"]

# Test settings per data scale: (single scale, scales, valid ranges per scale, mask_box_size, max_size).
SETTINGS = {
    # demo: 128 px images, trained at 112-144 px
    "demo": (
        128,
        [96, 112, 128, 160, 192, 224],
        "[[32,null],[16,null],[0,null],[0,96],[0,64],[0,48]]",
        56,
        448,
    ),
    # quick: 64 px images, trained at 56-72 px; 3 scales to keep it short
    "quick": (64, [48, 64, 96], "[[16,null],[0,null],[0,32]]", 32, 192),
}
SWITCHES = ["range_filter", "rare_boost", "soft_nms", "mask_from_best_scale"]
ROWS = [
    ("single scale", None),
    ("multi-scale, NMS 0.5", None),
    ("same, through the paper merge, all off", -1),  # isolates the RoI-mask round trip of paper mode
    ("+ flip", 0),
    ("+ (1) valid box range per scale", 1),
    ("+ (2) rare boost", 2),
    ("+ (3) NMS 0.7, then Soft-NMS", 3),
    ("+ (4) mask from the right scale", 4),
]


def run(*args: str) -> None:
    print("$ lvisctl " + " ".join(args), flush=True)
    subprocess.run([*LVISCTL, *args], check=True, cwd=REPO)


def manifest(run_dir: Path) -> list[dict]:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text())["artifacts"] if path.exists() else []


def dataset(run_dir: Path, split: str) -> Path | None:
    found = [a for a in manifest(run_dir) if a["kind"] == "dataset" and a["meta"].get("split") == split]
    return run_dir / found[-1]["path"] if found else None


def final_checkpoint(run_dir: Path) -> Path | None:
    """The newest final checkpoint of the highest stage (what tta-infer takes by default)."""
    finals = [a for a in manifest(run_dir) if a["kind"] == "checkpoint" and a["meta"].get("final")]
    if not finals:
        return None
    top = max(int(a["meta"].get("stage", 0)) for a in finals)
    return run_dir / [a for a in finals if int(a["meta"].get("stage", 0)) == top][-1]["path"]


def train_quick(run_dir: Path, iters: int) -> None:
    """A tiny from-scratch model on 64 px synthetic images (the demo recipe, shrunk)."""
    if dataset(run_dir, "val") is None:
        run("data", "synth", "--run-dir", str(run_dir), "--preset", "tiny", "--train-images", "160",
            "--val-images", "48", "--overwrite")  # fmt: skip
    if final_checkpoint(run_dir) is None:
        run("train", "--stage", "1", "--config", "configs/demo/stage1.yaml", "--run-dir", str(run_dir),
            f"solver.max_iter={iters}", "solver.warmup_iters=20", "augment.train_scales=[56,64,72]",
            "augment.max_size=128", "augment.mosaic.prob=0", "train.checkpoint_period=100000",
            "inference.scales=[64]", "inference.max_size=128")  # fmt: skip


def val_subset(val: Path, n: int | None) -> Path:
    """``n`` images of ``val`` with their annotations, next to it (same image root): for each category the
    first image (by id) that has it, so r/c/f are all scored, then the first other images up to ``n``."""
    if not n:
        return val
    path = val.with_name(f"{val.stem}_subset{n}.json")
    if not path.exists():
        data = json.loads(val.read_text())
        order = sorted(im["id"] for im in data["images"])
        first: dict[int, int] = {}
        for ann in sorted(data.get("annotations", []), key=lambda a: a["image_id"]):
            first.setdefault(ann["category_id"], ann["image_id"])
        ids = list(dict.fromkeys([*sorted(set(first.values())), *order]))[: max(n, len(set(first.values())))]
        data["images"] = [im for im in data["images"] if im["id"] in set(ids)]
        ids = {im["id"] for im in data["images"]}
        data["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in ids]
        path.write_text(json.dumps(data))
    return path


def row_args(index: int, settings: tuple) -> list[str]:
    single, scales, ranges, mask_box_size, max_size = settings
    if index == 0:
        return ["--scales", str(single)]
    scale_text = ",".join(map(str, scales))
    if ROWS[index][1] is None:
        return ["--scales", scale_text]
    on = ROWS[index][1]
    switches = [f"inference.tta.{name}={'true' if i < on else 'false'}" for i, name in enumerate(SWITCHES)]
    switches.append(f"inference.tta.flip={'true' if on >= 0 else 'false'}")
    return [
        "--tta",
        "paper",
        "--scales",
        scale_text,
        f"inference.tta.valid_ranges={ranges}",
        f"inference.tta.mask_box_size={mask_box_size}",
        f"inference.tta.max_size={max_size}",
        *switches,
    ]


def evaluate_row(run_dir: Path, val: Path, ckpt: Path, index: int, settings: tuple) -> tuple[dict, float]:
    slug = "".join(c if c.isalnum() else "_" for c in ROWS[index][0].lower()).strip("_")
    stem = f"tta_ablation_{val.stem}_{slug}"
    out = run_dir / "metrics" / f"{stem}.json"
    seconds = math.nan
    if not out.exists():
        start = time.perf_counter()
        run("tta-infer", "--run-dir", str(run_dir), "--images", str(val), "--checkpoint", str(ckpt),
            "--out", str(run_dir / "predictions" / f"{stem}.json"), "--overwrite",
            *row_args(index, settings))  # fmt: skip
        seconds = time.perf_counter() - start
        run("evaluate", "--run-dir", str(run_dir), "--out", str(out), "--overwrite")
    metrics = json.loads(out.read_text())
    per_cat = {}
    with open(out.with_suffix("").as_posix() + "_per_category_ap.csv") as fh:
        for row in csv.DictReader(fh):
            per_cat[int(row["category_id"])] = float(row["segm_AP"]) if row["segm_AP"] else math.nan
    return {"metrics": metrics, "per_category": per_cat}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a `lvisctl demo` run directory (its stage-2 model)")
    parser.add_argument("--quick", action="store_true", help="train a tiny model here (~2 min) and use it")
    parser.add_argument("--quick-iters", type=int, default=300)
    parser.add_argument(
        "--max-images", type=int, help="use the first N val images (default: all; 16 with --quick)"
    )
    args = parser.parse_args()
    if args.quick == (args.run_dir is not None) and not args.quick:
        parser.error("give --run-dir DIR (a demo run) or --quick")
    run_dir = (args.run_dir or REPO / "runs" / "tta-ablation-quick").resolve()
    if args.quick:
        train_quick(run_dir, args.quick_iters)
    settings = SETTINGS["quick" if args.quick else "demo"]
    val, ckpt = dataset(run_dir, "val"), final_checkpoint(run_dir)
    if val is None or ckpt is None:
        sys.exit(f"error: {run_dir}: needs a val dataset and a final checkpoint (run `lvisctl demo` first)")
    val = val_subset(val, args.max_images if args.max_images is not None else (16 if args.quick else None))

    sys.path.insert(0, str(REPO))
    from lvisctl.data.lvis import load_lvis
    from lvisctl.evaluation.report import comparison_table, phase_row
    from lvisctl.evaluation.thin_objects import thin_categories

    thin = thin_categories(load_lvis(val).annotations())
    rows, timings = {}, {}
    for index, (name, _) in enumerate(ROWS):
        result, seconds = evaluate_row(run_dir, val, ckpt, index, settings)
        rows[name] = phase_row(result["metrics"], result["per_category"], thin)
        timings[name] = seconds
    title = f"TTA ablation ({ckpt.name} on {val.name}, {len(thin)} thin categories; %)"
    Console().print(comparison_table(rows, title=title))
    print("tta-infer seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if not math.isnan(v)))
    print(f"scales {settings[1]}, single scale {settings[0]}, valid ranges {settings[2]}")


if __name__ == "__main__":
    main()
