"""The long-tail classifiers on one pipeline: stage 1 on synthetic LVIS with each classification loss, seeded.

Rows: softmax CE, EQL, EQLv2, Seesaw and the federated loss, each as the demo's stage 1 (``configs/demo/
stage1.yaml``: RFS, Mosaic / rotation / scale jitter, the tiny from-scratch Mask R-CNN; Table 1 row 4 with
the classifier swapped by ``model.roi_heads.cls_loss``), plus BAGS stage 2 (``lvisctl finetune-bags``,
``configs/demo/finetune_bags.yaml``) on the softmax model, at BAGS's 12 epochs and at the 200 iterations that
config had before. Every row is trained with 3 seeds (``seed=S``; the
synthetic data is the same for all, data seed 0) and the table gives mean +- std over seeds of mask AP,
APr, APc, APf and box AP on the synthetic val split.

Each phase runs through ``lvisctl.pipeline`` (the code of ``lvisctl demo``: training resumed when started and
skipped when finished, predictions on val, the LVIS evaluation), all in one run directory (``OUT/run``, data
made once). A finished (method, seed) is recorded in ``OUT/records.json`` and skipped by a re-run, so the
script is resumable at any point (``--table-only`` prints the table of what is recorded and trains
nothing). Writes ``OUT/longtail_ablation.md`` (the table) and ``OUT/apr_vs_apf.png``.

    PYTHONPATH=. .venv/bin/python benchmarks/longtail_ablation.py --out /tmp/longtail            # the table
    PYTHONPATH=. .venv/bin/python benchmarks/longtail_ablation.py --out /tmp/lt-smoke --preset tiny \\
        --iterations 2 --stage2-iterations 1 --seeds 1                                          # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("AP", "APr", "APc", "APf", "AP bbox")  # mask AP (LVIS), its frequency groups, box AP


@dataclass(frozen=True)
class Method:
    label: str
    key: str  # phase-name part and record key
    stage: int
    config: str
    overrides: tuple[str, ...] = ()
    starts_from: str | None = None  # stage 2: the method whose stage-1 checkpoint it fine-tunes


METHODS = (
    Method("softmax CE", "softmax", 1, "demo/stage1", ("model.roi_heads.cls_loss=softmax",)),
    Method("EQL", "eql", 1, "demo/stage1", ("model.roi_heads.cls_loss=eql",)),
    Method("EQLv2", "eqlv2", 1, "demo/stage1", ("model.roi_heads.cls_loss=eqlv2",)),
    Method("Seesaw", "seesaw", 1, "demo/stage1", ("model.roi_heads.cls_loss=seesaw",)),
    Method("federated", "federated", 1, "demo/stage1", ("model.roi_heads.cls_loss=federated",)),
    # BAGS's recipe at demo size is 12 epochs (configs/demo/finetune_bags.yaml, 3,600 iterations); the
    # 200-iteration row is its budget before 2026-12-08 (0.67 epoch: too short for the fresh classifier)
    Method(
        "BAGS stage 2, 12 epochs (on softmax CE)", "bags12", 2, "demo/finetune_bags", starts_from="softmax"
    ),
    Method(
        "BAGS stage 2, 200 iterations (on softmax CE)",
        "bags",
        2,
        "demo/finetune_bags",
        ("solver.max_iter=200",),
        starts_from="softmax",
    ),
)


def phase_name(key: str, seed: int) -> str:
    return f"s{seed}_{key}"


def phase_spec(method: Method, seed: int, iterations: int | None):
    """The pipeline phase of ``method`` trained with ``seed`` (``iterations``: solver.max_iter, None = the
    config's budget)."""
    from lvisctl.pipeline import PhaseSpec

    overrides = [*method.overrides, f"seed={seed}"]
    if iterations is not None:
        overrides.append(f"solver.max_iter={iterations}")
    if method.starts_from is not None:
        overrides.append(f"train.init_from={phase_name(method.starts_from, seed)}")
    name = phase_name(method.key, seed)
    return PhaseSpec(method.label, method.stage, name, method.config, tuple(overrides))


# ------------------------------------------------------------------------------------------ records
def load_records(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_records(path: Path, records: Mapping[str, dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
    tmp.replace(path)  # a crash never leaves a half-written record file


def run_one(run, val_json: Path, thin: set[int], spec, say) -> dict:
    """Train (or resume) one phase, predict on val and evaluate it; its record."""
    from lvisctl.pipeline import ensure_predictions, evaluate_phase, train_phase

    start = time.perf_counter()
    seconds = train_phase(run, spec, _load(spec), say)
    trained = time.perf_counter() - start
    ensure_predictions(run, val_json, spec, say)
    row, metrics_file, _ = evaluate_phase(run, val_json, spec, thin, prefix="longtail")
    return {
        "row": {k: row[k] for k in METRICS},
        "train_seconds": seconds if seconds is not None else trained,
        "seconds": time.perf_counter() - start,
        "metrics": str(metrics_file),
    }


def _load(spec):
    from lvisctl.pipeline.phases import load_phase_config

    return load_phase_config(spec)


# ------------------------------------------------------------------------------------------ the table
def summarise(records: Mapping[str, dict], seeds: Sequence[int]) -> dict[str, dict[str, tuple]]:
    """label -> metric -> (mean, std, n) over the recorded seeds (std 0 with one seed)."""
    out: dict[str, dict[str, tuple]] = {}
    for method in METHODS:
        rows = [records[k]["row"] for s in seeds if (k := phase_name(method.key, s)) in records]
        if not rows:
            continue
        out[method.label] = {}
        for metric in METRICS:
            values = [100 * r[metric] for r in rows if not math.isnan(r[metric])]
            mean = statistics.fmean(values) if values else math.nan
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[method.label][metric] = (mean, std, len(rows))
    return out


def _cell(stat: tuple) -> str:
    mean, std, n = stat
    return "n/a" if math.isnan(mean) else (f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}")


def markdown_table(summary: Mapping[str, Mapping[str, tuple]]) -> str:
    header = ["method", "seeds", "mask AP", "APr", "APc", "APf", "box AP"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for label, stats in summary.items():
        n = next(iter(stats.values()))[2]
        lines.append("| " + " | ".join([label, str(n), *(_cell(stats[m]) for m in METRICS)]) + " |")
    return "\n".join(lines)


def rich_table(summary: Mapping[str, Mapping[str, tuple]], title: str):
    from rich.table import Table

    table = Table(title=title)
    for name in ("method", "seeds", "mask AP", "APr", "APc", "APf", "box AP"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for label, stats in summary.items():
        table.add_row(label, str(next(iter(stats.values()))[2]), *(_cell(stats[m]) for m in METRICS))
    return table


def plot_apr_apf(summary: Mapping[str, Mapping[str, tuple]], path: Path) -> None:
    """APr against APf per method, mean with +- std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, stats in summary.items():
        (fx, fs, _), (rx, rs, _) = stats["APf"], stats["APr"]
        ax.errorbar(fx, rx, xerr=fs, yerr=rs, fmt="o", capsize=3, label=label)
    ax.set_xlabel("APf (mask, %)")
    ax.set_ylabel("APr (mask, %)")
    ax.set_title("rare vs frequent classes, synthetic LVIS (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> None:
    sys.path.insert(0, str(REPO))
    from rich.console import Console
    from rich.text import Text

    from lvisctl.data.lvis import load_lvis
    from lvisctl.evaluation.thin_objects import thin_categories
    from lvisctl.pipeline import ensure_dataset
    from lvisctl.rundir import RunDir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "longtail-ablation")
    parser.add_argument("--preset", default="demo", help="synthetic data preset (demo; tiny for a smoke run)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="train from this seed on (a second machine)"
    )
    parser.add_argument("--iterations", type=int, default=None, help="stage-1 iterations (default: demo's)")
    parser.add_argument("--stage2-iterations", type=int, default=None, help="BAGS iterations (demo's)")
    parser.add_argument("--methods", default=",".join(m.key for m in METHODS), help="comma-separated keys")
    parser.add_argument(
        "--table-only", action="store_true", help="the table of what is recorded; train nothing"
    )
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    known = {m.key: m for m in METHODS}
    if unknown := [k for k in keys if k not in known]:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(known)}")
    for key in list(keys):  # BAGS fine-tunes the softmax model of the same seed
        if (start := known[key].starts_from) and start not in keys:
            keys.insert(0, start)
    methods = [known[k] for k in known if k in keys]
    seeds = list(range(args.seeds))

    console = Console(highlight=False)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out / "run")
    records_path = out / "records.json"
    records = load_records(records_path)
    wall = time.perf_counter()

    def say(text: str) -> None:
        console.print(text, markup=False)

    val_json = ensure_dataset(run, args.preset, 0, say)
    thin = thin_categories(load_lvis(val_json).annotations())
    to_train = [] if args.table_only else seeds[args.first_seed :]
    for seed in to_train:  # seed-major: a partial table has every method of the first seeds
        for method in methods:
            iters = args.stage2_iterations if method.stage == 2 else args.iterations
            spec = phase_spec(method, seed, iters)
            if spec.phase in records:
                say(f"{method.label}, seed {seed}: recorded, skipped")
                continue
            console.rule(Text(f"{method.label}, seed {seed} ({spec.phase})", style="bold"))
            row = {**run_one(run, val_json, thin, spec, say), "method": method.key, "seed": seed}
            records[spec.phase] = row
            save_records(records_path, records)
            say(f"{spec.phase}: mask AP {100 * row['row']['AP']:.1f}, trained {row['train_seconds']:.0f} s")

    summary = summarise(records, seeds)
    title = f"long-tail classifiers, stage 1 on synthetic LVIS ({args.preset}; %, mean ± std over seeds)"
    console.print(rich_table(summary, title))
    table = markdown_table(summary)
    total = sum(r["seconds"] for r in records.values() if r.get("seed", 0) in seeds)
    note = (
        f"\n\n{len(seeds)} seed(s); wall time of all recorded runs (train + predict + evaluate): "
        f"{total / 3600:.2f} h; this invocation: {(time.perf_counter() - wall) / 60:.1f} min.\n"
    )
    (out / "longtail_ablation.md").write_text(f"# {title}\n\n{table}{note}")
    plot_apr_apf(summary, out / "apr_vs_apf.png")
    say(note.strip())
    say(f"written: {out / 'longtail_ablation.md'}, {out / 'apr_vs_apf.png'}, {records_path}")


if __name__ == "__main__":
    main()
