"""Smoke test of benchmarks/train_speed.py: row selection, the long-tailed stats, and every kind of row
function once at the smallest size (timings are not checked, only that each row measured something)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_speed_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_select_rows_adds_section_baselines(bench):
    assert bench.select_rows(["eql,hm"]) == ["torchvision", "eql", "hm"]
    assert bench.select_rows(["data-mosaic", "e2e-full2"]) == [
        "data-none",
        "data-mosaic",
        "e2e-base",
        "e2e-full2",
    ]
    assert bench.select_rows(["sampler"]) == ["sampler-plain", "sampler-rfs", "sampler-factors"]
    assert len(bench.select_rows([])) == 7 + 5 + 3 + 3
    with pytest.raises(SystemExit, match="unknown rows"):
        bench.select_rows(["mosaic"])


def test_long_tail_stats(bench):
    stats = bench.long_tail_stats(3)
    # image counts 5000^1, 5000^0.5 = 70.7 -> 71, 5000^0 = 1; three instances per image
    assert stats.image_count.tolist() == [5000, 71, 1]
    assert stats.instance_count.tolist() == [15000, 213, 3]
    assert stats.frequency == ("f", "c", "r")
    assert stats.num_images == 100_170


def test_target_line(bench):
    def rows(core_seconds):
        return [
            bench.Row("torchvision", "models", "tv", 1.0, "it"),
            bench.Row("softmax", "models", "core", core_seconds, "it"),
        ]

    assert bench.target_line(rows(1.04)).startswith("core + softmax CE runs at 96.2%")  # 1 / 1.04
    assert bench.target_line(rows(1.04)).endswith("met)") and "NOT" not in bench.target_line(rows(1.04))
    assert "90.9%" in bench.target_line(rows(1.1)) and "NOT met" in bench.target_line(rows(1.1))
    assert bench.target_line(rows(1.0)[:1]) is None


def test_row_functions_smallest_size(bench, tmp_path):
    args = bench.parse_args(
        [
            "--size",
            "64",
            "--batch",
            "1",
            "--instances",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--classes",
            "5",
        ]
        + ["--samples", "2", "--rounds", "1"]
    )
    rows = bench.model_rows(["torchvision", "eql"], args, memory=False)
    lvis = bench.make_synthetic_lvis(tmp_path, 64, 12)
    rows += bench.data_rows(["data-none", "data-mosaic"], lvis, args)
    rows += bench.sampler_rows(["sampler-plain", "sampler-rfs", "sampler-factors"], lvis, args)
    rows.append(bench.e2e_row("e2e-full0", lvis, args))
    assert [r.key for r in rows] == [
        "torchvision", "eql", "data-none", "data-mosaic", "sampler-plain", "sampler-rfs", "sampler-factors",
        "e2e-full0",
    ]  # fmt: skip
    assert all(r.seconds > 0 and math.isfinite(r.rate) for r in rows)
    assert [r.unit for r in rows] == ["it", "it", "sample", "sample", "epoch", "epoch", "run", "it"]
    table = bench.render(rows, args)
    assert table.row_count == len(rows)
    assert list(table.columns[4].cells)[0] == "100.0%"  # each section's first row is its baseline


def test_workers_line_counts_the_workers_one_gpu_needs(bench):
    row = bench.Row("data-lvis", "workers", "lvis", 0.5, "sample")  # 2 samples/s per worker
    line = bench.workers_line([row])
    assert "2.00 samples/s" in line and "4.0-6.7 samples/s: 2-4 workers per GPU" in line  # 4/2, ceil(6.67/2)
    assert bench.workers_line([]) is None
    assert "data-lvis" not in bench.select_rows([])  # opt-in: it writes LVIS-size JPEGs first
    assert bench.select_rows(["workers"]) == ["data-lvis"]
