"""What a training run shows and records: live rich progress, TensorBoard scalars and images,
``logs/metrics_<phase>.jsonl`` (one json object per log step or evaluation, as detectron2's
``metrics.json``: ``pandas.read_json(path, lines=True)``), the loss-curve PNG.

Only rank 0 logs. The loss history lives in the checkpoints (``history``), so a resumed run's curve
covers the whole run; TensorBoard events written after the resumed checkpoint are purged
(``purge_step``) and so are the jsonl lines after it, so a replayed stretch is not recorded twice.
A run that fails before its first checkpoint leaves neither (:meth:`TrainLogger.discard`).
"""

from __future__ import annotations

import json
import math
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


def tensorboard_dir(run_root: Path, phase: str) -> Path:
    """``tensorboard/`` for stage 1, ``tensorboard/<phase>/`` for the others: a resumed phase purges its
    own replayed steps (``purge_step``), which would hide another phase's events in a shared folder."""
    root = Path(run_root) / "tensorboard"
    return root if phase == "stage1" else root / phase


def print_line(text: str) -> None:
    """One plain line on stdout (no rich markup: paths and keys may hold brackets)."""
    Console(highlight=False).print(text, markup=False, soft_wrap=True)


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
        metrics_path: Path | None = None,
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
        self._new_files: list[Path] = []
        self._metrics_path = metrics_path
        if not enabled:
            return
        if metrics_path is not None:
            self._new_files += _truncate_jsonl(metrics_path, start)
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            before = set(tensorboard_dir.glob("events.out.tfevents.*"))
            self._tb_dir_existed = tensorboard_dir.exists()
            self._tb_dir = tensorboard_dir
            self._writer = SummaryWriter(log_dir=str(tensorboard_dir), purge_step=start)
            self._new_files += [p for p in tensorboard_dir.glob("events.out.tfevents.*") if p not in before]
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

    def step(
        self,
        iteration: int,
        losses: Mapping[str, float] | None,
        lr: float,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        """``iteration`` = optimizer steps done; ``losses`` given on log iterations (rank-averaged);
        ``extra`` = timing, memory and gradient-norm scalars of the log step (TensorBoard + jsonl)."""
        if not self.enabled or self._progress is None:
            return
        info = None
        if losses is not None:
            info = f"{format_losses(losses)} lr={lr:.2e}"
            self.scalars(iteration, {**losses, "lr": lr, **(extra or {})}, prefix=self.tag)
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

    def scalars(self, iteration: int, values: Mapping[str, float], *, prefix: str) -> None:
        """``prefix/name`` scalars to TensorBoard and one jsonl line ``{"iteration", "prefix/name": ...}``."""
        if not self.enabled:
            return
        finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        if self._writer is not None:
            # the phase is TensorBoard's run (its own folder): the training tags are the same in every
            # phase (train/loss), so TensorBoard overlays stage 1 and stage 2 on one chart
            tb_prefix = "train" if prefix == self.tag else prefix
            for name, value in finite.items():
                self._writer.add_scalar(f"{tb_prefix}/{name}", value, iteration)
        if self._metrics_path is not None:
            line = {"iteration": iteration, **{f"{prefix}/{k}": v for k, v in finite.items()}}
            self._metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")

    def image(self, tag: str, image: Any, iteration: int) -> None:
        """A uint8 ``[3, H, W]`` image to TensorBoard."""
        if self.enabled and self._writer is not None:
            self._writer.add_image(tag, image, iteration, dataformats="CHW")

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, soft_wrap=True, markup=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def discard(self) -> None:
        """Remove what this logger created (the run failed before its first checkpoint)."""
        self.close()
        for path in self._new_files:
            path.unlink(missing_ok=True)
        tb_dir = getattr(self, "_tb_dir", None)
        if tb_dir is not None and not self._tb_dir_existed and tb_dir.is_dir() and not any(tb_dir.iterdir()):
            tb_dir.rmdir()


def _truncate_jsonl(path: Path, start: int) -> list[Path]:
    """Keep the lines of ``path`` up to iteration ``start`` (a resume replays what came after); returns
    ``[path]`` when the file is new (so a failed fresh run removes it)."""
    if not path.exists():
        return [path]
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("iteration", 0)) <= start:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a line cut by a kill mid-write
    from lvisctl.rundir import atomic_write_text

    atomic_write_text(path, "".join(k + "\n" for k in kept))
    return [] if start > 0 else [path]


def plot_loss_curves(
    history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "", log_scale: bool = True
) -> Path:
    """Each logged loss (and the total) against iteration, lr on a second axis; written atomically.

    The legend sits outside the axes (right), so it never covers a curve; ``log_scale`` = log y axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iters = [h["iteration"] for h in history]
    names = [k for k in (history[0] if history else {}) if k not in ("iteration", "lr")]
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    marker = "o" if len(iters) == 1 else None  # a single logged point draws no line: show it as a dot
    for name in names:
        width = 2.0 if name == "loss" else 1.0
        ax.plot(iters, [h[name] for h in history], label=name, linewidth=width, marker=marker)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if history:
        ax2 = ax.twinx()
        ax2.plot(iters, [h["lr"] for h in history], color="gray", linestyle="--", label="lr", marker=marker)
        ax2.set_ylabel("learning rate")
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
        # outside the plot area (right of the lr axis): curves are never hidden behind it
        ax.legend(lines, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.14, 1.0), borderaxespad=0)
    ax.set_title(title or "training losses")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
