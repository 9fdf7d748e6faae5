"""Progress display shared by the commands that run inference over an image list."""

from __future__ import annotations


class ImagesProgress:
    """A rich progress bar with images/s, shown by rank 0 only (other ranks print nothing)."""

    def __init__(self) -> None:
        import os

        self.enabled = int(os.environ.get("RANK", "0")) == 0
        self.progress = None
        self.task = None

    def __enter__(self) -> ImagesProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]inference"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}", markup=False),  # data, never Rich markup
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.progress.start()
        return self

    def start(self, total: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task("inference", total=total, rate="")

    def advance(self, n: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)
            speed = self.progress.tasks[self.task].speed
            self.progress.update(self.task, rate=f"{speed:.1f} img/s" if speed else "")

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
