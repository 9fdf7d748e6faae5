"""The HM ablation on the ``hm`` synthetic preset: which of the paper's mask techniques moves which metric.

From one stage-1 model trained on ``lvisctl data synth --preset hm`` (320 px images whose large thin
objects the FPN box rule pools from P3/P4 while Eq. 1 pools them from P2), stage-2 rows are fine-tuned
with frozen backbone/FPN/RPN, each with several seeds:

    GS                   Balanced GroupSoftmax only (the mask head as in stage 1)
    + Eq. 1              mask proposal assignment (paper Eq. 1)
    + balanced loss      Dice + weighted BCE (Eq. 2-5)
    + boundary           boundary supervision (BMask R-CNN)
    + heavier head       3 more mask convs and deformable RoI pooling ("More computation on head")

Each row adds one component to the previous. Per row: mean and spread (std over seeds) of mask AP,
AP on thin categories, the box-minus-mask gap, and the oracle-box mask IoU per mask/box-ratio bin
(``lvisctl analyze masks``). Everything runs through the real CLI in one run directory; finished steps
are skipped when the script is run again.

    .venv/bin/python benchmarks/hm_ablation.py                 # the full ablation (see README for time)
    .venv/bin/python benchmarks/hm_ablation.py --quick         # a plumbing check in a few minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LVISCTL = [sys.executable, "-m", "lvisctl"]

# Model and schedule at 320 px: the demo's small model with anchors and scales for the larger images.
SIZE_OVERRIDES = [
    "model.rpn.anchor_sizes=[16,32,64,128,256]",
    "augment.train_scales=[288,304,320,336,352]",
    "augment.max_size=640",
    "augment.mosaic.size=384",
    "inference.scales=[320]",
    "inference.max_size=640",
]
# Every HM component off: the stage-2 config minus HM = the GS row with the stage-1 mask head.
HM_OFF = [
    "model.mask_head.level_assign=box",
    "model.mask_head.loss=bce",
    "model.mask_head.boundary=false",
    "model.mask_head.num_convs=4",
    "model.roi_heads.roi_pool=align",
]
ROWS: list[tuple[str, list[str]]] = [
    ("GS", []),
    ("+ Eq. 1", ["model.mask_head.level_assign=eq1"]),
    ("+ balanced loss", ["model.mask_head.loss=balanced"]),
    ("+ boundary", ["model.mask_head.boundary=true"]),
    ("+ heavier head", ["model.mask_head.num_convs=7", "model.roi_heads.roi_pool=deform"]),
]
STAGE2_CONFIG = "configs/demo/stage2.yaml"  # GS + HM + heavier head on the demo model


def lvisctl(*args: str) -> None:
    print("$ lvisctl " + " ".join(args), flush=True)
    subprocess.run([*LVISCTL, *args], check=True, cwd=REPO)


def row_overrides(index: int) -> list[str]:
    """Overrides of row ``index``: every component off, then the components of rows 1..index on."""
    on = [o for _, extra in ROWS[1 : index + 1] for o in extra]
    return HM_OFF + on


def phase_name(index: int, seed: int) -> str:
    return f"hm{index}_seed{seed}"


def final_checkpoint(run, phase: str) -> Path | None:
    found = run.find("checkpoint", phase=phase, final=True)
    return run.resolve(found[-1]) if found else None


def train_stage1(run, iters: int) -> None:
    if final_checkpoint(run, "stage1") is not None:
        return
    resume = ["--resume"] if run.find("checkpoint", phase="stage1") else []
    lvisctl(
        "train",
        "--stage",
        "1",
        "--config",
        "configs/demo/stage1.yaml",
        "--run-dir",
        str(run.root),
        *resume,
        f"solver.max_iter={iters}",
        *SIZE_OVERRIDES,
    )


def train_row(run, index: int, seed: int, iters: int) -> None:
    phase = phase_name(index, seed)
    if final_checkpoint(run, phase) is not None:
        return
    resume = ["--resume"] if run.find("checkpoint", phase=phase) else []
    lvisctl(
        "train",
        "--stage",
        "2",
        "--phase",
        phase,
        "--config",
        STAGE2_CONFIG,
        "--run-dir",
        str(run.root),
        *resume,
        f"solver.max_iter={iters}",
        f"seed={seed}",
        *SIZE_OVERRIDES,
        *row_overrides(index),
    )


def evaluate_checkpoint(run, phase: str, val: Path, max_images: int | None) -> dict:
    """Mask/box AP, per-category mask AP and the oracle-box table of one phase's final checkpoint."""
    ckpt = final_checkpoint(run, phase)
    metrics_path = run.root / "metrics" / f"{phase}.json"
    analysis_path = run.root / "analysis" / f"{phase}.json"
    if not metrics_path.exists():
        preds = run.root / "predictions" / f"{phase}.json"
        lvisctl(
            "tta-infer",
            "--run-dir",
            str(run.root),
            "--images",
            str(val),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(preds),
            "--overwrite",
        )
        lvisctl(
            "evaluate",
            str(preds.with_suffix(".segm.json")),
            "--gt",
            str(val),
            "--iou-type",
            "segm",
            "--out",
            str(metrics_path),
            "--overwrite",
        )
        lvisctl(
            "evaluate",
            str(preds.with_suffix(".bbox.json")),
            "--gt",
            str(val),
            "--iou-type",
            "bbox",
            "--out",
            str(metrics_path.with_name(f"{phase}_bbox.json")),
            "--overwrite",
        )
    if not analysis_path.exists():
        extra = ["--max-images", str(max_images)] if max_images else []
        lvisctl(
            "analyze",
            "masks",
            "--run-dir",
            str(run.root),
            "--images",
            str(val),
            "--checkpoint",
            str(ckpt),
            "--name",
            phase,
            "--overwrite",
            *extra,
        )
    segm = json.loads(metrics_path.read_text())["segm"]
    bbox = json.loads(metrics_path.with_name(f"{phase}_bbox.json").read_text())["bbox"]
    per_cat = {}
    with open(metrics_path.with_suffix("").as_posix() + "_per_category_ap.csv") as fh:
        for row in csv.DictReader(fh):
            per_cat[int(row["category_id"])] = float(row["segm_AP"]) if row["segm_AP"] else math.nan
    oracle = json.loads(analysis_path.read_text())["checkpoints"][0]
    return {"segm": segm, "bbox": bbox, "per_category": per_cat, "oracle": oracle}


def row_numbers(result: dict, thin: set[int]) -> dict[str, float]:
    from lvisctl.evaluation.thin_objects import ap_thin_vs_rest

    split = ap_thin_vs_rest(result["per_category"], thin)
    table = result["oracle"]["table"]["all"]
    numbers = {
        "AP": result["segm"]["AP"],
        "AP thin": split["AP_thin"],
        "gap": result["bbox"]["AP"] - result["segm"]["AP"],
        "oracle AP": result["oracle"]["oracle_box_mask_ap"].get("AP", math.nan),
    }
    for label in ("<0.25", "0.25-0.5", ">=0.5"):
        value = table[label]["mask_iou"]
        numbers[f"IoU {label}"] = math.nan if value is None else value
    return numbers


def summary_table(rows: dict[str, list[dict[str, float]]], title: str) -> Table:
    columns = list(next(iter(rows.values()))[0])
    table = Table(title=title)
    table.add_column("row")
    table.add_column("seeds", justify="right")
    for col in columns:
        table.add_column(col, justify="right")
    for name, per_seed in rows.items():
        cells = []
        for col in columns:
            values = [100 * r[col] for r in per_seed if not math.isnan(r[col])]
            if not values:
                cells.append("n/a")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        table.add_row(name, str(len(per_seed)), *cells)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "hm-ablation")
    parser.add_argument("--seeds", type=int, default=3)
    # The defaults are the README table's settings (about 60-75 min on an unshared 2-core machine).
    parser.add_argument("--stage1-iters", type=int, default=600)
    parser.add_argument("--stage2-iters", type=int, default=150)
    parser.add_argument("--analysis-images", type=int, default=100, help="cap on oracle-box images")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the plumbing only")
    args = parser.parse_args()

    from lvisctl.data.lvis import load_lvis
    from lvisctl.evaluation.thin_objects import thin_categories
    from lvisctl.rundir import RunDir

    synth = ["--preset", "hm"]
    if args.quick:
        args.seeds, args.stage1_iters, args.stage2_iters = 1, 20, 4
        synth += [
            "--train-images",
            "40",
            "--val-images",
            "12",
            "--test-images",
            "2",
            "--unlabeled-images",
            "2",
        ]
    run = RunDir(args.run_dir.resolve())
    start = time.perf_counter()
    if not run.find("dataset", split="val"):
        lvisctl("data", "synth", "--run-dir", str(run.root), *synth)
    val = run.resolve(run.find("dataset", split="val")[-1])
    lvisctl("data", "stats", "--gt", str(val), "--out", str(run.root / "plots"), "--overwrite")
    train_stage1(run, args.stage1_iters)
    thin = thin_categories(load_lvis(val).annotations())
    rows: dict[str, list[dict[str, float]]] = {
        "stage 1": [row_numbers(evaluate_checkpoint(run, "stage1", val, args.analysis_images), thin)]
    }
    for name, _ in ROWS:
        rows[name] = []
    # seed-major: every row gets its first seed before any row gets its second (a stopped run still
    # gives a whole table; rerunning the script continues where it stopped)
    for seed in range(args.seeds):
        for index, (name, _) in enumerate(ROWS):
            train_row(run, index, seed, args.stage2_iters)
            result = evaluate_checkpoint(run, phase_name(index, seed), val, args.analysis_images)
            rows[name].append(row_numbers(result, thin))
    title = (
        f"HM ablation on the hm preset ({run.root.name}; {len(thin)} thin categories; mean ± std "
        f"over seeds, %)"
    )
    Console(width=170).print(summary_table(rows, title))
    print(f"wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
