"""Fault injection: kill lvisctl at random points, damage its partial results, fill its disk; then do what
a user does (run the same command again) and check that nothing was lost.

    python benchmarks/fault_injection.py --quick      # one attempt each: ~3 minutes on 2 idle CPU cores
    python benchmarks/fault_injection.py              # 10 attempts per scenario

Scenarios, each against a reference run that was never interrupted (tiny synthetic LVIS, tiny model, CPU):

- ``train kill``: SIGKILL to the whole process group of ``lvisctl train --stage 1`` at a random moment;
  rerun (``--resume`` once a checkpoint is recorded) until it finishes. Recovered = final weights
  bit-identical to the reference.
- ``tta-infer kill`` / ``pseudolabel kill``: SIGKILL at a random moment, rerun the same command.
  Recovered = output files byte-identical to the reference and registered, no ``.partial/`` left.
- ``damaged chunk``: ``tta-infer --max-chunks 1`` (a time-limited job), then one finished chunk file is
  truncated or overwritten with garbage; rerun. Recovered = identical output (the chunk is recomputed).
- ``disk full``: ``tta-infer``, ``evaluate`` and ``submit`` write their ``--out`` to a tmpfs too small for
  it. Recovered = exit 2 with one ``error: ... no space left on device`` line, no file (temporary or
  partial) left on the full disk, and the same command with room afterwards gives the reference
  output. Without the right to mount a tmpfs (not root), a full disk is simulated by making the final
  rename of an atomic write fail with ENOSPC (``sitecustomize`` hook), and the table says so.

- ``ensemble kill``, ``import-checkpoint kill``, ``pseudolabel openimages kill``, ``two writers of one
  --out`` (``tta-infer`` of two run dirs, two ``ensemble``): the commands added in round 2, see
  ``fault_scenarios.py``.

``lost`` counts attempts whose result differs, that could not be completed by reruns, or that left
half-written files. Exit status 1 when anything was lost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "device=cpu",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.log_period=1",
    "augment.train_scales=[64]",
    "augment.max_size=96",
    "augment.mosaic.size=96",
    "model.backbone.tiny_width=8",
    "model.fpn.out_channels=16",
    "model.roi_heads.fc_dim=32",
    "model.mask_head.conv_dim=16",
    "model.mask_head.num_convs=1",
    "sampler.rfs_threshold=0.3",
]
INFER = ["inference.num_workers=0", "inference.chunk_size=2", "inference.scales=[64]"]


@dataclass
class Row:
    scenario: str
    attempts: int = 0
    recovered: int = 0
    lost: int = 0
    note: str = ""

    def add(self, ok: bool, why: str = "") -> None:
        self.attempts += 1
        self.recovered += ok
        self.lost += not ok
        if not ok:
            print(f"  LOST ({self.scenario}): {why}", flush=True)


class Bench:
    def __init__(self, work: Path, rng: random.Random) -> None:
        self.work, self.rng = work, rng
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        self.env.pop("RANK", None)

    # ------------------------------------------------------------------ processes
    def cmd(self, *args: object) -> list[str]:
        return [sys.executable, "-m", "lvisctl", *map(str, args)]

    def run(self, *args: object, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.cmd(*args), cwd=self.work, env=env or self.env, capture_output=True, text=True, timeout=600
        )

    def run_killed(self, args: list[object], after: float) -> int | None:
        """Start the command, SIGKILL its process group after ``after`` seconds; its exit code if it
        finished before the kill, else None."""
        proc = subprocess.Popen(
            self.cmd(*args),
            cwd=self.work,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None

    def timed(self, *args: object) -> tuple[subprocess.CompletedProcess, float]:
        start = time.perf_counter()
        out = self.run(*args)
        return out, time.perf_counter() - start


def check(out: subprocess.CompletedProcess, what: str) -> None:
    if out.returncode != 0:
        raise SystemExit(f"{what} failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"<missing>")
    return h.hexdigest()


def model_digest(ckpt: Path) -> str:
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files an interrupted command must not leave behind."""
    if not folder.exists():
        return []
    bad = [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".partial-" in p.name]
    return [str(p.relative_to(folder)) for p in bad]


# ------------------------------------------------------------------------------------------ scenarios
def train_args(run: Path, train_json: Path, iters: int) -> list[object]:
    return [
        "train",
        "--stage",
        "1",
        "--config",
        REPO / "configs" / "demo" / "stage1.yaml",
        "--run-dir",
        run,
        *TINY,
        f"solver.max_iter={iters}",
        "solver.warmup_iters=2",
        "train.checkpoint_period=2",
        f"data.train={train_json}",
    ]


def has_checkpoint(run: Path) -> bool:
    try:
        manifest = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return any(a["kind"] == "checkpoint" for a in manifest["artifacts"])


def scenario_train(b: Bench, row: Row, n: int, train_json: Path, iters: int) -> Path:
    ref = b.work / "train_ref"
    out, seconds = b.timed(*train_args(ref, train_json, iters))
    check(out, "reference train")
    ref_digest = model_digest(ref / "checkpoints" / "stage1_final.pt")
    row.note = f"reference {seconds:.0f} s, {iters} iterations"
    for i in range(n):
        run = b.work / f"train_{i}"
        b.run_killed(train_args(run, train_json, iters), after=b.rng.uniform(0.2, 0.9) * seconds)
        ok, why = False, "did not finish after 3 reruns"
        for _ in range(3):
            args = train_args(run, train_json, iters)
            if has_checkpoint(run):
                args = ["train", "--stage", "1", "--run-dir", run, "--resume"]
            res = b.run(*args)
            if res.returncode == 0:
                final = run / "checkpoints" / "stage1_final.pt"
                same = final.exists() and model_digest(final) == ref_digest
                ok, why = same, "" if same else "final weights differ from the uninterrupted run"
                break
            why = (res.stderr.strip().splitlines() or ["?"])[-1]
        row.add(ok, why)
    return ref / "checkpoints" / "stage1_final.pt"


def tta_args(run: Path, images: Path, ckpt: Path, *extra: object) -> list[object]:
    return ["tta-infer", "--run-dir", run, "--images", images, "--checkpoint", ckpt, *extra, *INFER]


def predictions(run: Path) -> list[Path]:
    files = sorted((run / "predictions").glob("*.json")) if (run / "predictions").exists() else []
    return [f for f in files if f.name.endswith((".segm.json", ".bbox.json"))]


def registered(run: Path, paths: list[Path]) -> bool:
    try:
        manifest = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    recorded = {a["path"] for a in manifest["artifacts"]}
    return all(str(p.relative_to(run)) in recorded for p in paths)


def scenario_kill_rerun(
    b: Bench, row: Row, n: int, name: str, make_args, outputs, reference_seconds: float, ref: str
) -> None:
    def complete(run: Path) -> str:
        """'' when the run's outputs are whole, recorded and equal to the reference; else what is not."""
        files = outputs(run)
        if not files or digest(*files) != ref:
            return "output missing or different from the uninterrupted run"
        if (run / ".partial").exists() or not registered(run, files) or leftovers(run):
            return f"leftovers or unregistered output ({leftovers(run)})"
        return ""

    for i in range(n):
        run = b.work / f"{name}_{i}"
        b.run_killed(make_args(run), after=b.rng.uniform(0.2, 0.9) * reference_seconds)
        if not complete(run):  # killed after it had finished everything: nothing to redo
            row.add(True)
            continue
        res = b.run(*make_args(run))  # what a user does: the same command again
        problem = complete(run)
        if res.returncode != 0:
            problem = (res.stderr.strip().splitlines() or ["?"])[-1]
        row.add(not problem, problem)


def scenario_chunks(b: Bench, row: Row, n: int, images: Path, ckpt: Path, ref: str) -> None:
    for i in range(n):
        run = b.work / f"chunk_{i}"
        first = b.run(*tta_args(run, images, ckpt, "--max-chunks", 2))
        chunks = sorted((run / ".partial").rglob("rank*_*.json"))
        if first.returncode != 75 or not chunks:
            row.add(False, f"--max-chunks run: exit {first.returncode}, {len(chunks)} chunks")
            continue
        victim = b.rng.choice(chunks)
        if i % 2 == 0:
            victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 2)])  # cut short
        else:
            victim.write_bytes(os.urandom(64))  # garbage (not even UTF-8)
        res = b.run(*tta_args(run, images, ckpt))
        ok = res.returncode == 0 and digest(*predictions(run)) == ref and not (run / ".partial").exists()
        row.add(ok, res.stderr.strip()[-300:] or "output differs")


def mount_tmpfs(path: Path, size_kb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True
    )
    return res.returncode == 0


def simulated_full_disk_env(b: Bench, full: Path) -> dict:
    """Fallback: a ``sitecustomize`` that makes every rename into ``full`` fail with ENOSPC."""
    hook = b.work / "enospc_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(
        "import errno, os\n"
        f"_FULL = {str(full)!r}\n"
        "_replace = os.replace\n"
        "def replace(src, dst, *a, **k):\n"
        "    if os.fspath(dst).startswith(_FULL):\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return _replace(src, dst, *a, **k)\n"
        "os.replace = replace\n"
    )
    return {**b.env, "PYTHONPATH": f"{hook}{os.pathsep}{REPO}"}


def scenario_disk_full(b: Bench, row: Row, images: Path, ckpt: Path, ref_run: Path) -> None:
    full = b.work / "full"
    ref_segm = sorted((ref_run / "predictions").glob("*.segm.json"))[0]
    size_kb = max(4, ref_segm.stat().st_size // 2048)  # half of the smallest output
    real = mount_tmpfs(full, size_kb)
    env = b.env
    if real:
        filler = full / "filler"
        row.note = f"real tmpfs of {size_kb} KB"
    else:
        env = simulated_full_disk_env(b, full)
        filler = None
        row.note = "simulated: rename into the full folder fails with ENOSPC (tmpfs mount not permitted)"
    try:
        cases = [
            (
                "tta-infer",
                tta_args(b.work / "disk_run", images, ckpt, "--out", full / "p.json"),
                ["p.segm.json"],
            ),
            ("evaluate", ["evaluate", ref_segm, "--gt", images, "--out", full / "m.json"], ["m.json"]),
            ("submit", ["submit", ref_segm, "--image-info", images, "--out", full / "s.zip"], ["s.zip"]),
        ]
        for name, args, names in cases:
            if filler is not None:  # leave less room than the output needs
                filler.write_bytes(b"\0" * max(0, size_kb * 1024 - 4096))
            res = subprocess.run(
                b.cmd(*args), cwd=b.work, env=env, capture_output=True, text=True, timeout=600
            )
            lines = [x for x in res.stderr.splitlines() if x.strip()]  # progress bars come first
            one_line = (
                res.returncode == 2
                and "Traceback" not in res.stderr
                and lines[-1].startswith("error: ")
                and "no space left on device" in lines[-1]
                and sum(x.startswith("error: ") for x in lines) == 1
            )
            left = [p.name for p in full.iterdir() if p.name != "filler"] if full.exists() else []
            for p in full.iterdir():  # the next case starts from an empty disk again
                p.unlink()
            # with room again (another folder), the same command must succeed
            room = b.work / "room"
            room.mkdir(exist_ok=True)
            retry = [str(a).replace(str(full), str(room)) for a in args]
            again = b.run(*[a for a in retry if a != "--overwrite"])
            ok = one_line and not left and again.returncode == 0 and all((room / x).exists() for x in names)
            row.add(
                ok,
                f"{name}: exit {res.returncode}, stderr {lines[-1:]}, left {left}, rerun {again.returncode}",
            )
    finally:
        if real:
            subprocess.run(["umount", str(full)], capture_output=True)


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one attempt per scenario (a few minutes)")
    parser.add_argument("--attempts", type=int, default=None, help="kills per scenario (default 10, quick 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        default="train,tta,pseudo,chunk,disk,ensemble,import,openimages,writers",
        help="comma-separated scenarios to run (references are always made): train, tta, pseudo, chunk, "
        "disk, ensemble, import, openimages, writers",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    n = args.attempts or (1 if args.quick else 10)
    only = set(args.only.split(","))
    iters = 6 if args.quick else 12
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lvisctl_faults_"))
    work.mkdir(parents=True, exist_ok=True)
    b = Bench(work, random.Random(args.seed))
    start = time.perf_counter()

    check(b.run("data", "synth", "--preset", "tiny", "--out", work / "data", "--overwrite"), "data synth")
    train_json, val_json = work / "data" / "lvis_v1_train.json", work / "data" / "lvis_v1_val.json"
    rows = [Row("train kill (SIGKILL, resume)")]
    print("train ...", flush=True)
    ckpt = scenario_train(b, rows[0], n if "train" in only else 0, train_json, iters)

    print("tta-infer ...", flush=True)
    rows.append(Row("tta-infer kill (SIGKILL, rerun)"))
    ref_run = work / "tta_ref"
    out, seconds = b.timed(*tta_args(ref_run, val_json, ckpt))
    check(out, "reference tta-infer")
    ref = digest(*predictions(ref_run))
    rows[-1].note = f"reference {seconds:.0f} s"
    tta_n = n if "tta" in only else 0
    scenario_kill_rerun(
        b, rows[-1], tta_n, "tta", lambda r: tta_args(r, val_json, ckpt), predictions, seconds, ref
    )

    if "pseudo" in only:
        print("pseudolabel ...", flush=True)
        rows.append(Row("pseudolabel kill (SIGKILL, rerun)"))
        scenario_pseudolabel(b, rows[-1], n, train_json, ckpt)
    if "chunk" in only:
        print("damaged chunks ...", flush=True)
        rows.append(Row("damaged chunk in .partial/ (rerun)"))
        scenario_chunks(b, rows[-1], max(1, n // 2), val_json, ckpt, ref)
    if "disk" in only:
        print("disk full ...", flush=True)
        rows.append(Row("disk full (tta-infer, evaluate, submit)"))
        scenario_disk_full(b, rows[-1], val_json, ckpt, ref_run)
    rows += round2_scenarios(b, only, n, work / "data", ckpt, ref_run)
    return report(rows, start, work, keep=args.workdir is not None)


def round2_scenarios(b: Bench, only: set[str], n: int, data: Path, ckpt: Path, ref_run: Path) -> list[Row]:
    """The commands added in round 2 (issue 22): kills of ensemble, import-checkpoint and pseudolabel
    openimages; two writers of one --out (compared with the ensemble's reference, so that runs first)."""
    import fault_scenarios as fs  # next to this file (python puts the script's folder on sys.path)

    val_json, rows = data / "lvis_v1_val.json", []

    def start(title: str) -> Row:
        print(f"{title} ...", flush=True)
        rows.append(Row(title))
        return rows[-1]

    if only & {"ensemble", "writers"}:
        row = start("ensemble kill (SIGKILL, rerun)")
        fs.scenario_ensemble_kill(b, row, n if "ensemble" in only else 0, val_json, ref_run)
    if "import" in only:
        fs.scenario_import_kill(b, start("import-checkpoint kill (SIGKILL, rerun)"), n)
    if "openimages" in only:
        fs.scenario_openimages_kill(b, start("pseudolabel openimages kill (rerun)"), n, data, ckpt)
    if "writers" in only:
        fs.scenario_two_writers(b, start("two writers of one --out"), n, val_json, ckpt, ref_run)
    return rows


def scenario_pseudolabel(b: Bench, row: Row, n: int, train_json: Path, ckpt: Path) -> None:
    work = b.work

    def pseudo_args(run: Path) -> list[object]:
        return ["pseudolabel", "--run-dir", run, "--images", train_json, "--mode", "missing", "--checkpoint",
                ckpt, "--score-thresh", "0.0", *INFER]  # fmt: skip

    def pseudo_out(run: Path) -> list[Path]:
        return sorted((run / "pseudo_labels").glob("*.json")) if (run / "pseudo_labels").exists() else []

    out, seconds = b.timed(*pseudo_args(work / "pseudo_ref"))
    check(out, "reference pseudolabel")
    row.note = f"reference {seconds:.0f} s"
    ref_pseudo = digest(*pseudo_out(work / "pseudo_ref"))
    scenario_kill_rerun(b, row, n, "pseudo", pseudo_args, pseudo_out, seconds, ref_pseudo)


def report(rows: list[Row], start: float, work: Path, *, keep: bool) -> int:
    print()
    print(f"{'scenario':40} {'attempts':>8} {'recovered':>9} {'lost':>5}  note")
    for r in rows:
        print(f"{r.scenario:40} {r.attempts:8d} {r.recovered:9d} {r.lost:5d}  {r.note}")
    total_lost = sum(r.lost for r in rows)
    elapsed = time.perf_counter() - start
    print(f"\n{sum(r.attempts for r in rows)} attempts, {total_lost} lost, {elapsed:.0f} s (work dir {work})")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if total_lost else 0


if __name__ == "__main__":
    sys.exit(main())
