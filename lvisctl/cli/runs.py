"""``lvisctl runs``: look inside a run directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lvisctl.rundir import RunDir

runs_app = typer.Typer(help="Inspect run directories and their manifests.", no_args_is_help=True)


@runs_app.command("show")
def show(
    run_dir: Path = typer.Argument(..., help="Run directory to show."),
    verify: bool = typer.Option(
        False, "--verify", help="Re-hash every artifact and flag changed or missing files."
    ),
) -> None:
    """Print the manifest as a table: each artifact, what made it and what it was made from."""
    run = RunDir(run_dir, create=False)
    table = Table(title=f"{run.root}", show_lines=False)
    for col in ("kind", "path", "size", "sha256", "created", "made from", "command"):
        table.add_column(col, overflow="fold")
    if verify:
        table.add_column("status")
    for a in run.artifacts():
        row = [
            a.kind,
            a.path,
            _human_size(a.size),
            a.sha256[:12],
            a.created[:19].replace("T", " "),
            "\n".join(i["path"] for i in a.inputs) or "-",
            a.command,
        ]
        if verify:
            row.append(_status(run, a))
        table.add_row(*row)
    Console().print(table)


def _status(run: RunDir, artifact) -> str:
    from lvisctl.errors import LvisctlError

    try:
        run.resolve(artifact)
    except LvisctlError as err:
        return "[red]missing[/]" if "missing" in str(err) else "[red]changed[/]"
    return "[green]ok[/]"


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
