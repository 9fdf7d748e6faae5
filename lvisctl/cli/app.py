"""Entry point: builds the Typer app from the per-command modules and turns user errors into one line.

Command modules import torch and friends inside their functions, so ``lvisctl --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import typer
from rich.console import Console
from rich.text import Text

from lvisctl.errors import LvisctlError, printable

app = typer.Typer(
    name="lvisctl",
    help="Long-tailed, large-vocabulary instance segmentation on LVIS (the lvisTraveler pipeline).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module exposes ``register(app)``; the order here is the order of ``lvisctl --help``.
COMMAND_MODULES = (
    "data",
    "pseudolabel",
    "import_checkpoint",
    "train",
    "finetune_bags",
    "tta_infer",
    "ensemble",
    "evaluate",
    "submit",
    "analyze",
    "visualize",
    "runs",
    "configs",
    "demo",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"lvisctl.cli.{_name}").register(app)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from lvisctl import __version__

        typer.echo(f"lvisctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the lvisctl version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    """Long-tailed, large-vocabulary instance segmentation on LVIS (the lvisTraveler pipeline)."""


def main() -> None:
    """Console-script entry point; the console also goes to ``RUN/logs/<command>_<phase>.log``."""
    from lvisctl.cli._console_log import console_log

    if sys.stdout is None:  # started with stdout closed (>&-): say so, rather than fail later elsewhere
        err_console.print(
            Text.assemble(
                ("error:", "bold red"),
                " standard output is closed; open it or redirect it to a file (> out.txt)",
            )
        )
        sys.exit(LvisctlError.exit_code)
    with console_log(sys.argv[1:], typer.main.get_command(app)):
        _run()


def _run() -> None:
    try:
        app()
    except LvisctlError as err:
        # the message is user text (paths, json keys like res[val].json): never read it as Rich markup
        # one line: no leading empty line, no raw NUL / escapes from a file name or a library's text
        err_console.print(Text.assemble(("error:", "bold red"), " ", printable(str(err))))
        sys.exit(err.exit_code)
    except OSError as err:  # a full disk or read-only folder that no layer converted: one line too
        from lvisctl.rundir.io import os_error_line

        line = os_error_line(err)
        if line is None:
            raise
        _report_os_error(line)
        sys.exit(LvisctlError.exit_code)
    except KeyboardInterrupt:
        err_console.print(
            "interrupted; finished artifacts are kept and the command can be resumed", markup=False
        )
        sys.exit(130)


def _report_os_error(line: str) -> None:
    try:
        err_console.print(Text.assemble(("error:", "bold red"), " ", line))
    except OSError:
        pass  # stderr itself is gone: the exit status still says it failed
    with contextlib.suppress(OSError):  # stdout on /dev/full: do not fail again while exiting
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115


if __name__ == "__main__":
    main()
