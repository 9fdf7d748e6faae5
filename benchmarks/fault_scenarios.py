"""Fault-injection scenarios of the commands added in round 2 (issue 22), used by ``fault_injection.py``:

- ``ensemble kill``: SIGKILL to ``lvisctl ensemble`` (chunked, resumable) at a random moment, rerun.
- ``import-checkpoint kill``: SIGKILL to ``lvisctl import-checkpoint`` of a torchvision Mask R-CNN file,
  rerun the same command (no ``--overwrite``). Recovered = the same weights as an uninterrupted import,
  checkpoint and report recorded.
- ``pseudolabel openimages kill``: SIGKILL to ``lvisctl pseudolabel openimages`` (a folder + ImageID
  CSV), rerun.
- ``two writers of one --out``: two ``tta-infer`` of *different* run dirs, then two ``ensemble``, started
  together on the same ``--out``. Recovered = one writes, the other stops with one line (or, started
  after the first finished, refuses to replace it), the file equals an uninterrupted run's and its
  manifest sha256 matches (nothing mixed, nothing silently replaced).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

INFER = ["inference.num_workers=0", "inference.chunk_size=2", "inference.scales=[64]"]


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"<missing>")
    return h.hexdigest()


def _manifest(run: Path) -> dict[str, dict[str, Any]]:
    try:
        return {a["path"]: a for a in json.loads((run / "manifest.json").read_text())["artifacts"]}
    except (OSError, ValueError, KeyError):
        return {}


def _recorded_and_intact(run: Path, files: list[Path]) -> bool:
    entries = _manifest(run)
    for f in files:
        entry = entries.get(str(f.relative_to(run)))
        if entry is None or entry["sha256"] != hashlib.sha256(f.read_bytes()).hexdigest():
            return False
    return True


def _kill_and_rerun(
    b, row, n: int, name: str, make_args: Callable, outputs: Callable, seconds: float, ref: str
):
    """Kill each attempt at a random moment of the reference's duration, rerun the same command once;
    recovered = outputs equal to the reference, recorded with their sha256, no ``.partial/`` left."""

    def problem(run: Path) -> str:
        files = outputs(run)
        if not files or _digest(*files) != ref:
            return "output missing or different from the uninterrupted run"
        if (run / ".partial").exists() or not _recorded_and_intact(run, files):
            return "leftover .partial/ or output not recorded"
        return ""

    for i in range(n):
        run = b.work / f"{name}_{i}"
        b.run_killed(make_args(run), after=b.rng.uniform(0.2, 0.9) * seconds)
        if not problem(run):  # killed after it had finished
            row.add(True)
            continue
        res = b.run(*make_args(run))
        why = problem(run) if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1]
        row.add(not why, why)


# ------------------------------------------------------------------------------------------ ensemble
def _ensemble_inputs(b, ref_run: Path) -> list[Path]:
    """The reference predictions and a copy with shifted boxes: two results files of the same images."""
    src = sorted((ref_run / "predictions").glob("*.segm.json"))[0]
    folder = b.work / "ens_inputs"
    folder.mkdir(exist_ok=True)
    out = []
    for name, shift in (("a", 0.0), ("b", 1.5)):
        for kind in ("segm", "bbox"):
            recs = json.loads(src.with_name(src.name.replace(".segm.", f".{kind}.")).read_text())
            for r in recs:
                if "bbox" in r:
                    r["bbox"][0] += shift
            (folder / f"{name}.{kind}.json").write_text(json.dumps(recs))
        out.append(folder / f"{name}.segm.json")
    return out


def scenario_ensemble_kill(b, row, n: int, images: Path, ref_run: Path) -> None:
    inputs = _ensemble_inputs(b, ref_run)

    def args(run: Path) -> list[object]:
        return [
            "ensemble",
            *inputs,
            "--images",
            images,
            "--run-dir",
            run,
            "--out",
            run / "e.json",
            "--chunk-size",
            1,
        ]

    def outputs(run: Path) -> list[Path]:
        return [p for p in (run / "e.segm.json", run / "e.bbox.json") if p.exists()]

    out, seconds = b.timed(*args(b.work / "ens_ref"))
    _check(out, "reference ensemble")
    row.note = f"reference {seconds:.0f} s"
    _kill_and_rerun(b, row, n, "ens", args, outputs, seconds, _digest(*outputs(b.work / "ens_ref")))


# ------------------------------------------------------------------------------------------ import
def _torchvision_file(b) -> Path:
    path = b.work / "tv_maskrcnn.pth"
    if not path.exists():
        code = (
            "import torch, torchvision; torch.manual_seed(0); "
            "m = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None); "
            f"torch.save(m.state_dict(), {str(path)!r})"
        )
        subprocess.run([b.cmd()[0], "-c", code], env=b.env, check=True, timeout=600)
    return path


def scenario_import_kill(b, row, n: int) -> None:
    import torch

    source = _torchvision_file(b)

    def args(run: Path) -> list[object]:
        return ["import-checkpoint", source, "--run-dir", run]

    def weights(run: Path) -> str:
        ckpt = run / "checkpoints" / "stage1_final.pt"
        if not ckpt.exists():
            return "<missing>"
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
        h = hashlib.sha256()
        for key in sorted(state):
            h.update(key.encode() + state[key].contiguous().numpy().tobytes())
        return h.hexdigest()

    def problem(run: Path, ref: str) -> str:
        kinds = {a["kind"] for a in _manifest(run).values()}
        if weights(run) != ref:
            return "imported weights missing or different"
        if not {"checkpoint", "report"} <= kinds:
            return f"not recorded (kinds {sorted(kinds)})"
        return ""

    out, seconds = b.timed(*args(b.work / "import_ref"))
    _check(out, "reference import-checkpoint")
    ref = weights(b.work / "import_ref")
    row.note = f"reference {seconds:.0f} s"
    for i in range(n):
        run = b.work / f"import_{i}"
        b.run_killed(args(run), after=b.rng.uniform(0.2, 0.9) * seconds)
        if not problem(run, ref):
            row.add(True)
            continue
        res = b.run(*args(run))  # the same command: no --overwrite
        why = problem(run, ref) if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1]
        row.add(not why, why)


# ------------------------------------------------------------------------------------------ openimages
def scenario_openimages_kill(b, row, n: int, data: Path, ckpt: Path) -> None:
    folder = data / "unlabeled2017"
    listing = b.work / "openimages.csv"
    ids = sorted(p.stem for p in folder.glob("*.jpg"))
    listing.write_text("ImageID,Source\n" + "".join(f"{i},verification\n" for i in ids))

    def args(run: Path) -> list[object]:
        return ["pseudolabel", "openimages", "--run-dir", run, "--images", folder, "--image-list", listing,
                "--checkpoint", ckpt, "--score-thresh", "0.0", *INFER]  # fmt: skip

    def outputs(run: Path) -> list[Path]:
        return sorted((run / "pseudo_labels").glob("*.json")) if (run / "pseudo_labels").exists() else []

    out, seconds = b.timed(*args(b.work / "oi_ref"))
    _check(out, "reference pseudolabel openimages")
    row.note = f"reference {seconds:.0f} s, {len(ids)} images"
    _kill_and_rerun(b, row, n, "oi", args, outputs, seconds, _digest(*outputs(b.work / "oi_ref")))


# ------------------------------------------------------------------------------------------ two writers
def _together(b, first: list[object], second: list[object]) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(
            b.cmd(*a), cwd=b.work, env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for a in (first, second)
    ]
    results = []
    for p, a in zip(procs, (first, second), strict=True):
        out, err = p.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(a, p.returncode, out, err))
    return results


def _one_wins(results: list[subprocess.CompletedProcess]) -> str:
    codes = sorted(r.returncode for r in results)
    if codes != [0, 2]:
        return f"exit codes {codes}; expected one writer (0) and one refused (2)"
    loser = next(r for r in results if r.returncode == 2)
    lines = [x for x in loser.stderr.splitlines() if x.strip().startswith("error: ")]
    if len(lines) != 1 or "Traceback" in loser.stderr:
        return f"the refused writer did not say one line: {loser.stderr.strip()[-200:]}"
    if not ("is being written by" in lines[0] or "already exists" in lines[0]):
        return f"unexpected refusal: {lines[0]}"
    return ""


def scenario_two_writers(b, row, n: int, images: Path, ckpt: Path, ref_run: Path) -> None:
    ref_files = sorted((ref_run / "predictions").glob("*.segm.json")) + sorted(
        (ref_run / "predictions").glob("*.bbox.json")
    )
    ref = _digest(*ref_files)
    inputs = _ensemble_inputs(b, ref_run)
    ens_ref = b.work / "ens_ref"
    for i in range(n):
        a, c = b.work / f"wa_{i}", b.work / f"wb_{i}"
        out = a / "predictions" / "shared.json"  # recorded in run a; b writes into a's folder
        tta = ["--images", images, "--checkpoint", ckpt, "--out", out, *INFER]
        results = _together(b, ["tta-infer", "--run-dir", a, *tta], ["tta-infer", "--run-dir", c, *tta])
        files = [out.with_name("shared.segm.json"), out.with_name("shared.bbox.json")]
        why = _one_wins(results) or ("" if _digest(*files) == ref else "tta-infer output differs")
        if not why and results[0].returncode == 0 and not _recorded_and_intact(a, files):
            why = "run a's recorded sha256 no longer matches its output"
        row.add(not why, f"tta-infer x2: {why}")
        e = b.work / f"we_{i}.json"
        ens = ["ensemble", *inputs, "--images", images, "--out", e, "--chunk-size", 1]
        results = _together(b, ens, ens)
        files = [e.with_name(f"we_{i}.segm.json"), e.with_name(f"we_{i}.bbox.json")]
        want = _digest(ens_ref / "e.segm.json", ens_ref / "e.bbox.json")
        why = _one_wins(results) or ("" if _digest(*files) == want else "ensemble output differs (mixed?)")
        if (b.work / ".partial").exists():
            why = why or "ensemble left .partial/"
        row.add(not why, f"ensemble x2: {why}")


def _check(out: subprocess.CompletedProcess, what: str) -> None:
    if out.returncode != 0:
        raise SystemExit(f"{what} failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
