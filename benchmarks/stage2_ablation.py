"""Table 2 on synthetic LVIS: stage 1 vs GS (finetune-bags) vs GS + HM (train --stage 2), optionally + MS.

Runs the real commands in one run directory (each step is skipped or resumed when already done), then
prints, per row: mask AP, APr/APc/APf, box AP, the box-minus-mask gap, and mask AP on thin categories
(median mask/box area ratio < 0.25) versus the rest.

    .venv/bin/python benchmarks/stage2_ablation.py --run-dir runs/stage2-ablation

A run directory made by ``lvisctl demo`` already holds the data, stage 1 and the GS + HM phase.
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
ROWS = {  # name -> (command, config, phase)
    "GS": (["finetune-bags"], "configs/demo/finetune_bags.yaml", "finetune_bags"),
    "GS + HM": (["train", "--stage", "2"], "configs/demo/stage2.yaml", "stage2"),
    "GS + HM + MS": (
        ["train", "--stage", "2", "--phase", "stage2_ms"],
        "configs/demo/stage2_ms.yaml",
        "stage2_ms",
    ),
}


def run(*args: str) -> None:
    print("$ lvisctl " + " ".join(args), flush=True)
    subprocess.run([*LVISCTL, *args], check=True, cwd=REPO)


def manifest(run_dir: Path) -> list[dict]:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text())["artifacts"] if path.exists() else []


def dataset(run_dir: Path, split: str) -> Path | None:
    found = [a for a in manifest(run_dir) if a["kind"] == "dataset" and a["meta"].get("split") == split]
    return run_dir / found[-1]["path"] if found else None


def _finished(run_dir: Path, phase: str) -> bool:
    return any(
        a["kind"] == "checkpoint" and a["meta"].get("phase") == phase and a["meta"].get("final")
        for a in manifest(run_dir)
    )


def has_checkpoint(run_dir: Path, phase: str) -> bool:
    return any(a["kind"] == "checkpoint" and a["meta"].get("phase") == phase for a in manifest(run_dir))


def train_phase(run_dir: Path, command: list[str], config: str, phase: str, iters: int) -> float | None:
    """Train (or resume) one phase; its wall seconds, None when it had already finished."""
    args = [*command, "--run-dir", str(run_dir)]
    if _finished(run_dir, phase):
        return None
    start = time.perf_counter()
    if has_checkpoint(run_dir, phase):
        run(*args, "--resume")
    else:
        run(*args, "--config", config, f"solver.max_iter={iters}")
    return time.perf_counter() - start


def evaluate_phase(run_dir: Path, phase: str, val: Path) -> dict:
    ckpt = run_dir / "checkpoints" / f"{phase}_final.pt"
    out = run_dir / "metrics" / f"ablation_{phase}.json"
    if not out.exists():
        run(
            "tta-infer",
            "--run-dir",
            str(run_dir),
            "--images",
            str(val),
            "--checkpoint",
            str(ckpt),
            "--overwrite",
        )
        run("evaluate", "--run-dir", str(run_dir), "--out", str(out), "--overwrite")
    metrics = json.loads(out.read_text())
    per_cat = {}
    with open(out.with_suffix("").as_posix() + "_per_category_ap.csv") as fh:
        for row in csv.DictReader(fh):
            per_cat[int(row["category_id"])] = float(row["segm_AP"]) if row["segm_AP"] else math.nan
    return {"metrics": metrics, "per_category": per_cat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "stage2-ablation")
    parser.add_argument("--stage1-iters", type=int, default=600)
    parser.add_argument("--stage2-iters", type=int, default=200)
    parser.add_argument("--rows", default="GS,GS + HM", help="comma-separated: " + ", ".join(ROWS))
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()

    sys.path.insert(0, str(REPO))
    from lvisctl.data.lvis import load_lvis
    from lvisctl.evaluation.report import comparison_table, phase_row
    from lvisctl.evaluation.thin_objects import thin_categories

    if dataset(run_dir, "val") is None:
        run("data", "synth", "--run-dir", str(run_dir), "--preset", "demo", "--overwrite")
    val = dataset(run_dir, "val")
    seconds = {
        "stage 1": train_phase(
            run_dir, ["train", "--stage", "1"], "configs/demo/stage1.yaml", "stage1", args.stage1_iters
        )
    }
    phases = {"stage 1": "stage1"}
    for name in [r.strip() for r in args.rows.split(",") if r.strip()]:
        command, config, phase = ROWS[name]
        seconds[name] = train_phase(run_dir, command, config, phase, args.stage2_iters)
        if has_checkpoint(run_dir, phase):
            phases[name] = phase

    thin = thin_categories(load_lvis(val).annotations())
    rows = {}
    for name, phase in phases.items():
        result = evaluate_phase(run_dir, phase, val)
        rows[name] = phase_row(result["metrics"], result["per_category"], thin)
    title = f"Table 2 on synthetic LVIS ({run_dir.name}; {len(thin)} thin categories in val; %)"
    Console().print(comparison_table(rows, title=title))
    trained = {k: v for k, v in seconds.items() if v is not None}
    if trained:
        print("training seconds (this run): " + ", ".join(f"{k} {v:.0f}" for k, v in trained.items()))


if __name__ == "__main__":
    main()
