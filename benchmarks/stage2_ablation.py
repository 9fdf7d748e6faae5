"""Table 2 on synthetic LVIS: stage 1 vs GS (finetune-bags) vs GS + HM (train --stage 2), optionally + MS.

Runs the phases in one run directory through ``lvisctl.pipeline`` (the code ``lvisctl demo`` runs; each
phase is skipped when finished and resumed when started), then prints, per row: mask AP, APr/APc/APf, box
AP, the box-minus-mask gap, and mask AP on thin categories (median mask/box area ratio < 0.25) versus
the rest.

    .venv/bin/python benchmarks/stage2_ablation.py --run-dir runs/stage2-ablation          # README size
    .venv/bin/python benchmarks/stage2_ablation.py --quick --run-dir /tmp/ablation-quick  # minutes: tiny

A run directory made by ``lvisctl demo`` already holds the data, stage 1 and the GS + HM phase.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO))
    from rich.console import Console
    from rich.text import Text

    from lvisctl.evaluation.report import comparison_table
    from lvisctl.pipeline import ABLATION_ROWS, DEMO_STAGE1, run_phases
    from lvisctl.rundir import RunDir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "stage2-ablation")
    parser.add_argument("--stage1-iters", type=int, default=600)
    parser.add_argument("--stage2-iters", type=int, default=200)
    parser.add_argument("--rows", default="GS,GS + HM", help="comma-separated: " + ", ".join(ABLATION_ROWS))
    parser.add_argument("--quick", action="store_true", help="tiny data, 20 + 10 iterations (a smoke run)")
    args = parser.parse_args()
    preset, it1, it2 = ("tiny", 20, 10) if args.quick else ("demo", args.stage1_iters, args.stage2_iters)

    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [n for n in names if n not in ABLATION_ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ABLATION_ROWS)}")
    stage1 = replace(DEMO_STAGE1, overrides=(f"solver.max_iter={it1}",))
    rows = [replace(ABLATION_ROWS[n], overrides=(f"solver.max_iter={it2}",)) for n in names]
    console = Console(highlight=False)
    run = RunDir(args.run_dir.resolve())
    result = run_phases(
        run,
        [stage1, *rows],
        preset=preset,
        seed=0,
        prefix="ablation",
        heading=lambda text: console.rule(Text(text, style="bold")),
        report=lambda text: console.print(text, markup=False),
    )
    title = f"Table 2 on synthetic LVIS ({run.root.name}; %)"
    console.print(comparison_table(result.rows, title=title))
    if result.train_seconds:
        trained = ", ".join(f"{k} {v:.0f}" for k, v in result.train_seconds.items())
        console.print(f"training seconds (this run): {trained}", markup=False)


if __name__ == "__main__":
    main()
