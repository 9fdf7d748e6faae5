"""How tests run ``lvisctl``. ``run_cli`` / the ``cli`` fixture: the real entry point
(``lvisctl.cli.app.main``: one-line errors, exit codes, the console log) in this process, so no
interpreter start or torch import is paid per call; use it. ``invoke``: Typer's CliRunner, for the tests
that inspect the raised ``LvisctlError`` itself. ``lvisctl``: a separate process, for what needs one
(training runs that install signal handlers, closed stdout, torchrun); such tests are ``slow``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.helpers import REPO


def run_cli(args: Sequence[Any], capsys: Any, monkeypatch: Any) -> tuple[int, str, str]:
    """``lvisctl ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    from lvisctl.cli.app import main

    monkeypatch.setattr(sys, "argv", ["lvisctl", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


@pytest.fixture
def cli(capsys: Any, monkeypatch: Any) -> Callable[..., tuple[int, str, str]]:
    """``cli("evaluate", path, "--gt", gt)`` -> ``(exit code, stdout, stderr)``."""
    return lambda *args: run_cli(args, capsys, monkeypatch)


def invoke(*args: Any) -> Any:
    """``lvisctl ARGS`` through Typer's CliRunner: ``result.exception`` is the LvisctlError raised."""
    from typer.testing import CliRunner

    from lvisctl.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(code: int, err: str) -> str:
    """The single ``error: ...`` line a user mistake gives (exit status 2, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def lvisctl(*args: Any) -> tuple[int, str]:
    """``python -m lvisctl ARGS`` in a process of its own: ``(exit code, stdout + stderr)``."""
    proc = subprocess.run(
        [sys.executable, "-m", "lvisctl", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr
