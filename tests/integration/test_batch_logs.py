"""Logs that work in a batch job: with stderr in a file, ``tta-infer`` prints periodic progress lines
(images, img/s, ETA), and every command's console is kept in ``RUN/logs/<command>_<phase>.log``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from lvisctl.cli._console_log import clean, log_name
from lvisctl.cli.app import app
from lvisctl.rundir import RunDir
from tests.helpers import REPO
from tests.helpers.tiny_run import add_checkpoint, make_lvis

LINE = re.compile(r"^tta-infer (\d+)/3 images, [0-9.]+ img/s, eta \d+m\d\ds$")


def _lvisctl(args: list[str], stderr_file: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LVISCTL_PROGRESS_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    with open(stderr_file, "w") as err:
        return subprocess.run(
            [sys.executable, "-m", "lvisctl", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=300,
        )


def test_tta_infer_with_stderr_in_a_file_prints_progress_lines_and_keeps_its_console(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    images = make_lvis(data)
    run = RunDir(tmp_path / "run")
    add_checkpoint(run, stage=2, final=True, seed=2)
    args = ["tta-infer", "--run-dir", str(run.root), "--images", str(images), "inference.batch_size=1"]
    proc = _lvisctl(args, tmp_path / "slurm.err")
    stderr = (tmp_path / "slurm.err").read_text()
    assert proc.returncode == 0, stderr[-2000:]
    progress = [int(m.group(1)) for m in map(LINE.match, stderr.splitlines()) if m]
    assert progress == [1, 2, 3]  # per image (batch size 1), not once at the end
    assert "tta-infer: 3 images" in stderr

    log = (run.root / "logs" / "tta-infer.log").read_text()
    assert log.startswith("== ") and f"lvisctl tta-infer --run-dir {run.root}" in log.splitlines()[0]
    assert "tta-infer 3/3 images" in log  # stderr ...
    assert "segm.json" in log and "val_stage2_final_s48" in log  # ... and stdout (the summary table)
    assert "\x1b[" not in log

    # a second command of the run gets its own log; a rerun appends (nothing of the user's is replaced)
    again = _lvisctl([*args, "--overwrite"], tmp_path / "again.err")
    assert again.returncode == 0
    assert (run.root / "logs" / "tta-infer.log").read_text().count("== ") == 2


def test_a_refused_command_leaves_no_run_directory_behind(tmp_path):
    proc = _lvisctl(["tta-infer", "--run-dir", str(tmp_path / "nope"), "--images", "x.json"], tmp_path / "e")
    assert proc.returncode != 0 and not (tmp_path / "nope").exists()


def test_log_names_follow_command_and_phase():
    from typer.main import get_command

    group = get_command(app)
    assert log_name(["train", "--run-dir", "R", "--stage", "2"], group) == (Path("R"), "train_stage2.log")
    assert log_name(["train", "--run-dir=R", "--phase", "gs_hm"], group) == (Path("R"), "train_gs_hm.log")
    assert log_name(["train", "--run-dir", "R"], group) == (Path("R"), "train_stage1.log")
    assert log_name(["analyze", "masks", "--run-dir", "R"], group) == (Path("R"), "analyze-masks.log")
    assert log_name(["evaluate", "res.json"], group) is None  # no run directory: no log


def test_a_live_bar_on_a_terminal_leaves_only_its_printed_lines_in_the_log():
    class Terminal:  # what the log sees: each write as the console makes it
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    term = Terminal()
    console = Console(file=term, force_terminal=True, width=80)
    with Progress(console=console, auto_refresh=False) as bar:
        task = bar.add_task("train", total=3)
        for i in range(3):
            bar.update(task, advance=1)
            console.print(f"[red]line {i}[/]")
            bar.refresh()
    assert any("\x1b[" in w for w in term.writes)  # colours and cursor moves reach the terminal
    kept = "".join(clean(w) for w in term.writes)
    assert [ln for ln in kept.splitlines() if ln.startswith("line")] == ["line 0", "line 1", "line 2"]
    assert "\x1b" not in kept and kept.count("train") == 1  # the bar's last frame (its stop) only
