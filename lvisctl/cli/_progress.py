"""Progress display shared by the commands that run inference over an image list.

On a terminal: a rich bar. Otherwise (a SLURM log, CI, ``2> file``): one plain line every
``LVISCTL_PROGRESS_SECONDS`` seconds (default 30) with images done, images/s and the ETA, so a batch job
shows it is alive long before it ends (a Rich live bar writes nothing to a file until it stops).
"""

from __future__ import annotations

import os
import sys
import time

PERIOD_ENV = "LVISCTL_PROGRESS_SECONDS"
DEFAULT_PERIOD_S = 30.0


def progress_period() -> float:
    """Seconds between the plain progress lines (``LVISCTL_PROGRESS_SECONDS``; 0 = every update)."""
    try:
        return max(0.0, float(os.environ.get(PERIOD_ENV, DEFAULT_PERIOD_S)))
    except ValueError:
        return DEFAULT_PERIOD_S


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


class PeriodicLines:
    """Plain ``label done/total images, x img/s, eta ...`` lines on stderr, at most one per ``period``."""

    def __init__(self, label: str, period: float) -> None:
        self.label, self.period = label, period
        self.total, self.done = 0, 0
        self._t0 = self._last = time.perf_counter()

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self._t0 = self._last = time.perf_counter()
        self._print(f"{self.label}: {total} images")

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.period or self.done >= self.total:
            self._last = now
            self._print(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        eta = format_eta((self.total - self.done) / rate) if rate > 0 else "?"
        return f"{self.label} {self.done}/{self.total} images, {rate:.2f} img/s, eta {eta}"

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


class ImagesProgress:
    """Images/s progress shown by rank 0 only (other ranks print nothing): a rich bar on a terminal,
    periodic plain lines otherwise."""

    def __init__(self, label: str = "inference") -> None:
        self.enabled = int(os.environ.get("RANK", "0")) == 0
        self.label = label
        self.progress = None
        self.task = None
        self.lines: PeriodicLines | None = None

    def __enter__(self) -> ImagesProgress:
        if not self.enabled:
            return self
        if not sys.stderr.isatty():
            self.lines = PeriodicLines(self.label, progress_period())
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}", markup=False),  # data, never Rich markup
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.progress.start()
        return self

    def start(self, total: int) -> None:
        if self.lines is not None:
            self.lines.start(total)
        if self.progress is not None:
            self.task = self.progress.add_task(self.label, total=total, rate="")

    def advance(self, n: int) -> None:
        if self.lines is not None:
            self.lines.advance(n)
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)
            speed = self.progress.tasks[self.task].speed
            self.progress.update(self.task, rate=f"{speed:.1f} img/s" if speed else "")

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
