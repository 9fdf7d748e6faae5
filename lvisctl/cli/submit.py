"""``lvisctl submit``: build and validate the LVIS v1 test-dev submission file."""

from __future__ import annotations

from pathlib import Path

import typer

from lvisctl.cli._options import OptionalRunDirOption, OverwriteOption
from lvisctl.errors import LvisctlError


def submit(
    results: Path | None = typer.Argument(
        None, help="LVIS results json; default: newest segm predictions in --run-dir."
    ),
    image_info: Path | None = typer.Option(
        None,
        "--image-info",
        help="lvis_v1_image_info_test_dev.json (or a GT file); default: the run's data.test_info.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        resolve_path=True,  # relative to the working directory, not to --run-dir
        help="Submission file (.json, or .zip holding the json; default RUN_DIR/submission/).",
    ),
    truncate: bool = typer.Option(
        False, "--truncate", help="Keep the top 300 detections per image by score."
    ),
    run_dir: OptionalRunDirOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Validate results against the server's rules and write the file to upload (EvalAI, LVIS v1.0)."""
    from rich.console import Console

    from lvisctl.evaluation.submission import coverage_warning, run_submit

    # Relative paths are relative to the working directory, as everywhere in Unix (not to --run-dir).
    out = out.expanduser().resolve() if out is not None else None
    if image_info is None:
        from lvisctl.data.remembered import remembered_path

        if run_dir is None:
            raise LvisctlError("submit: pass --image-info FILE (or --run-dir of a run that remembers it)")
        image_info = remembered_path(run_dir, "test_info", "--image-info", lambda s: typer.echo(s, err=True))
    summary = run_submit(results, image_info, out, truncate=truncate, run_dir=run_dir, overwrite=overwrite)
    Console().print(summary_table(summary))
    warning = coverage_warning(summary)
    if warning:
        typer.echo(warning, err=True)


def summary_table(summary):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"submission {escape(str(summary.out))}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("images covered", f"{summary.images_covered} / {summary.images}")
    table.add_row("detections", str(summary.detections))
    if summary.truncated:
        table.add_row("dropped by --truncate", str(summary.truncated))
    names = {"r": "rare", "c": "common", "f": "frequent", "?": "unknown frequency"}
    for key, count in summary.per_frequency.items():
        table.add_row(f"detections on {names[key]} categories", str(count))
    return table


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
