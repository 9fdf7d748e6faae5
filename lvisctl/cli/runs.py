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
    summary: bool = typer.Option(
        False, "--summary", help="Per training phase: its checkpoint and the AP evaluate measured on it."
    ),
) -> None:
    """Print the manifest as a table: each artifact, what made it and what it was made from."""
    run = _existing_run(run_dir)
    if summary:
        Console(width=None if sys.stdout.isatty() else 160).print(_summary_table([run]))
        return
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


@runs_app.command("compare")
def compare(
    run_a: Path = typer.Argument(..., help="First run directory."),
    run_b: Path = typer.Argument(..., help="Second run directory."),
) -> None:
    """Side by side, per training phase: checkpoint and AP of two runs, and B minus A."""
    pair = [_existing_run(run_a), _existing_run(run_b)]
    Console(width=None if sys.stdout.isatty() else 160).print(_summary_table(pair))


def _existing_run(path: Path) -> RunDir:
    run = RunDir(path, create=False)
    if not run.manifest_path.exists():
        raise LvisctlError(f"{run.root}: not a run directory (no {run.manifest_path.name})")
    return run


def _summary_table(runs: list[RunDir]) -> Table:
    from lvisctl.evaluation.run_summary import phase_summaries

    rows = [{r.phase: r for r in phase_summaries(run)} for run in runs]
    phases = list(dict.fromkeys(p for by_phase in rows for p in by_phase))
    title = " vs ".join(escape(str(run.root)) for run in runs)
    table = Table(title=title)
    table.add_column("phase")
    for i, _ in enumerate(runs):
        tag = "" if len(runs) == 1 else f" {'AB'[i]}"
        for col in ("checkpoint", "mask AP", "box AP"):
            table.add_column(col + tag, justify="left" if col == "checkpoint" else "right")
    if len(runs) == 2:
        table.add_column("mask AP B-A", justify="right")
    for phase in phases:
        cells = [escape(phase)]
        for by_phase in rows:
            r = by_phase.get(phase)
            ckpt = "-" if r is None else f"{Path(r.checkpoint).name} (iter {r.iteration})"
            cells += [escape(ckpt), _ap(r.segm_ap if r else None), _ap(r.bbox_ap if r else None)]
        if len(runs) == 2:
            a, b = (by_phase.get(phase) for by_phase in rows)
            both = a is not None and b is not None and a.segm_ap is not None and b.segm_ap is not None
            cells.append(f"{100 * (b.segm_ap - a.segm_ap):+.1f}" if both else "-")
        table.add_row(*cells)
    return table


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


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
