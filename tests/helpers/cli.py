"""The one way tests run ``lvisctl``: the real entry point (``lvisctl.cli.app.main``: one-line errors,
exit codes, the console log) in this process, so no interpreter or torch import is paid per call.

Tests that need a separate process (signals, closed stdout, torchrun, a fresh interpreter) start one
themselves and are ``slow``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest


def run_cli(args: Sequence[Any], capsys: Any, monkeypatch: Any) -> tuple[int, str, str]:
    """``lvisctl ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    from lvisctl.cli.app import main

    monkeypatch.setattr(sys, "argv", ["lvisctl", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    """The single ``error: ...`` line a user mistake gives (exit status 2, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def cli(capsys: Any, monkeypatch: Any) -> Callable[..., tuple[int, str, str]]:
    """``cli("evaluate", path, "--gt", gt)`` -> ``(exit code, stdout, stderr)``."""
    return lambda *args: run_cli(args, capsys, monkeypatch)
