"""``lvisctl runs``: look inside a run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from lvisctl.rundir.lineage import gone_inputs

runs_app = typer.Typer(help="Inspect run directories and their manifests.", no_args_is_help=True)


@runs_app.command("show")
def show(
    run_dir: Path = typer.Argument(..., help="Run directory to show."),
    verify: bool = typer.Option(
        False, "--verify", help="Re-hash every artifact and flag changed or missing files."
    ),
    full: bool = typer.Option(False, "--full", help="Show whole command lines and input paths."),
) -> None:
    """Print the manifest as a table: each artifact, what made it and what it was made from."""
    run = RunDir(run_dir, create=False)
    if not run.manifest_path.exists():
        raise LvisctlError(f"{run.root}: not a run directory (no {run.manifest_path.name})")
    table = Table(title=escape(str(run.root)), show_lines=False)
    for col in ("kind", "path", "size", "sha256", "created", "made from", "command"):
        table.add_column(col, overflow="fold", no_wrap=col in ("kind", "size", "sha256"))
    if verify:
        table.add_column("status")
    bad = orphans = 0
    known = {a.sha256 for a in run.artifacts()}
    for a in run.artifacts():
        row = [  # paths and command lines are user text: escaped, never read as rich markup
            escape(a.kind),
            escape(a.path),
            _human_size(a.size),
            escape(a.sha256[:8]),
            escape(a.created[5:16].replace("T", " ")),
            escape("\n".join(i["path"] if full else Path(i["path"]).name for i in a.inputs) or "-"),
            escape(a.command if full else _short_command(a.command)),
        ]
        if verify:
            status = _status(run, a)
            bad += status != "[green]ok[/]"
            gone = gone_inputs(run, a, known)
            if gone:  # intact itself, but made from files that were replaced or deleted since
                orphans += 1
                status += f"\n[yellow]input gone: {escape(', '.join(Path(g).name for g in gone))}[/]"
            row.append(status)
        table.add_row(*row)
    # Piped output (logs, CI) has no terminal width: use a wide one rather than folding every path.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    if verify and orphans:
        typer.echo(
            f"warning: {orphans} artifact(s) were made from inputs that exist nowhere any more (replaced "
            "or deleted since): their 'made from' names another file now",
            err=True,
        )
    if verify and bad:
        raise LvisctlError(f"{run.root}: {bad} artifact(s) changed or missing since they were recorded")


def _short_command(command: str) -> str:
    """``lvisctl train --stage 2 --config ... x=y`` -> ``train --stage 2`` (the subcommand and its stage)."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if len(words) < 2:
        return command
    out = [w for w in words[1:3] if not w.startswith("--") or w == "--stage"]
    if "--stage" in words:
        out = [words[1], "--stage", words[words.index("--stage") + 1]]
    return " ".join(out[:3]) if out else command


def _status(run: RunDir, artifact) -> str:
    from lvisctl.errors import LvisctlError

    try:
        run.resolve(artifact)
    except LvisctlError as err:
        if "leaves the run directory" in str(err):
            return "[red]refused: path leaves the run dir[/]"
        return "[red]missing[/]" if "missing on disk" in str(err) else "[red]changed[/]"
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
