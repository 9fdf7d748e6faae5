"""``lvisctl.pipeline``: the one phase runner of the demo and the Table 2 ablation; cli/ holds no logic."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_cli_demo_only_declares_the_command():
    tree = ast.parse((REPO / "lvisctl" / "cli" / "demo.py").read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions == {"demo_command", "register"}


def test_the_ablation_reads_no_manifest_of_its_own():
    source = (REPO / "benchmarks" / "stage2_ablation.py").read_text()
    assert "manifest.json" not in source and "subprocess" not in source
    assert "from lvisctl.pipeline import" in source


def test_ablation_rows_name_packaged_configs():
    from lvisctl.config import load_config
    from lvisctl.pipeline import ABLATION_ROWS, DEMO_STAGE1, DEMO_STAGE2

    for spec in [DEMO_STAGE1, DEMO_STAGE2, *ABLATION_ROWS.values()]:
        load_config(spec.config)
    assert ABLATION_ROWS["GS"].phase == "finetune_bags" and ABLATION_ROWS["GS + HM"].phase == "stage2"


@pytest.mark.slow
def test_run_phases_trains_evaluates_and_skips_on_rerun(tmp_path):
    from lvisctl.pipeline import ABLATION_ROWS, DEMO_STAGE1, run_phases
    from lvisctl.rundir import RunDir

    fast = ("train.num_workers=0", "inference.num_workers=0")
    specs = [
        replace(DEMO_STAGE1, overrides=("solver.max_iter=2", *fast)),
        replace(ABLATION_ROWS["GS"], overrides=("solver.max_iter=1", *fast)),
    ]
    run = RunDir(tmp_path / "run")
    said: list[str] = []
    first = run_phases(run, specs, preset="tiny", seed=0, prefix="t", heading=said.append, report=said.append)
    assert set(first.rows) == {s.label for s in specs} and set(first.train_seconds) == set(first.rows)
    assert all(0 <= row["AP"] <= 1 for row in first.rows.values())
    assert (run.root / "metrics" / "t_finetune_bags.json").is_file()
    said.clear()
    again = run_phases(run, specs, preset="tiny", seed=0, prefix="t", heading=said.append, report=said.append)
    assert not again.train_seconds and again.rows == first.rows
    assert sum("already trained" in s for s in said) == 2 and sum("already made" in s for s in said) == 2
