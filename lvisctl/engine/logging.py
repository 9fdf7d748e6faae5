"""What a training run shows and records: live rich progress, TensorBoard scalars, the loss-curve PNG.

Only rank 0 logs. The loss history lives in the checkpoints (``history``), so a resumed run's curve
covers the whole run; TensorBoard events written after the resumed checkpoint are purged
(``purge_step``) so a replayed stretch is not drawn twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lvisctl.rundir import atomic_output


def format_losses(losses: Mapping[str, float]) -> str:
    return " ".join(f"{k.removeprefix('loss_')}={v:.4f}" for k, v in losses.items())


class TrainLogger:
    """Progress bar (iteration, losses, lr, ETA), periodic log lines when not on a terminal, TensorBoard."""

    def __init__(
        self,
        *,
        total: int,
        start: int,
        tensorboard_dir: Path | None,
        stage: Any,
        enabled: bool = True,
        console: Console | None = None,
    ) -> None:
        self.enabled = enabled
        self.total = total
        # stage: an int or an engine Phase; label "stage 2" / "finetune_bags (stage 2)", tag "stage2"
        self.label = str(stage) if not isinstance(stage, int) else f"stage {stage}"
        self.tag = getattr(stage, "name", f"stage{stage}")  # TensorBoard prefix
        self.console = console or Console(highlight=False)
        self._writer = None
        self._progress: Progress | None = None
        self._t0 = time.perf_counter()
        self._start = start
        if not enabled:
            return
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tensorboard_dir), purge_step=start)
        self._progress = Progress(
            TextColumn(f"[bold]{self.label}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal,  # CI logs get the periodic lines instead
        )
        self._task = self._progress.add_task("train", total=total, completed=start, info="")
        self._progress.start()

    def step(self, iteration: int, losses: Mapping[str, float] | None, lr: float) -> None:
        """``iteration`` = optimizer steps done; ``losses`` given on log iterations (rank-averaged)."""
        if not self.enabled or self._progress is None:
            return
        info = None
        if losses is not None:
            info = f"{format_losses(losses)} lr={lr:.2e}"
            if self._writer is not None:
                for name, value in losses.items():
                    self._writer.add_scalar(f"{self.tag}/{name}", value, iteration)
                self._writer.add_scalar(f"{self.tag}/lr", lr, iteration)
            if not self.console.is_terminal:  # CI logs / files: no live bar, so print a line
                line = f"{self.label} iter {iteration}/{self.total} {info} {self._eta(iteration)}"
                self.console.print(line, soft_wrap=True)
        fields = {"info": info} if info is not None else {}
        self._progress.update(self._task, completed=iteration, **fields)

    def _eta(self, iteration: int) -> str:
        done = iteration - self._start
        if done <= 0:
            return ""
        remaining = (time.perf_counter() - self._t0) / done * (self.total - iteration)
        return f"eta {int(remaining // 60)}m{int(remaining % 60):02d}s"

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def plot_loss_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Each logged loss (and the total) against iteration, lr on a second axis; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iters = [h["iteration"] for h in history]
    names = [k for k in (history[0] if history else {}) if k not in ("iteration", "lr")]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name in names:
        ax.plot(iters, [h[name] for h in history], label=name, linewidth=2.0 if name == "loss" else 1.0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if history:
        ax2 = ax.twinx()
        ax2.plot(iters, [h["lr"] for h in history], color="gray", linestyle="--", label="lr")
        ax2.set_ylabel("learning rate")
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
        ax.legend(lines, labels, fontsize=8, loc="upper right")
    ax.set_title(title or "training losses")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
