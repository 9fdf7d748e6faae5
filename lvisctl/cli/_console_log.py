"""Every command's console, kept in the run directory: ``logs/<command>_<phase>.log`` (detectron2's
``log.txt``), so the lines a batch job printed ("initialised fresh", "frozen parts", skipped images, the
progress lines) survive the job's own log.

``sys.stdout`` / ``sys.stderr`` are wrapped for the command's lifetime: everything still goes to the
terminal or job log as before, and a copy (ANSI codes removed; a live bar's redrawn frames left out) is
appended to the log file once the run directory exists (``manifest.json``: a command refused before it
made the run directory leaves nothing behind). Only rank 0 writes. Commands without ``--run-dir`` keep no
log. Each invocation starts with a header line (time and the command line); reruns append.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

_CSI = re.compile(r"\x1b\[[0-9;?]*([A-Za-z])|\x1b\][^\x07]*\x07")
_CURSOR = set("ABCDEFGHJKSTfhl")  # cursor moves / erases / show-hide: a live display redrawing itself


def clean(text: str) -> str:
    """``text`` as it reads in a file: colour codes removed; a live redraw keeps only its finished lines."""
    redraw = any(m.group(1) and m.group(1) in _CURSOR for m in _CSI.finditer(text))
    plain = _CSI.sub("", text).replace("\r", "")
    if redraw:  # the live bar is the unterminated tail of the write; printed lines above it are kept
        plain = plain[: plain.rfind("\n") + 1]
    return plain


class ConsoleLog:
    """The log file, opened when the run directory's manifest exists; text before that is held."""

    def __init__(self, run_dir: Path, name: str, header: str) -> None:
        self.manifest = run_dir / "manifest.json"
        self.path = run_dir / "logs" / name
        self._held: list[str] = [header]
        self._file: TextIO | None = None

    def write(self, text: str) -> None:
        text = clean(text)
        if not text:
            return
        if self._file is None:
            self._held.append(text)
            self._open_if_ready()
        else:
            self._file.write(text)
            self._file.flush()

    def _open_if_ready(self) -> None:
        if not self.manifest.is_file():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._file.write("".join(self._held))
        self._file.flush()
        self._held = []

    def close(self) -> None:
        if self._file is None:
            self._open_if_ready()  # the command made the run directory after its last line
        if self._file is not None:
            self._file.close()
            self._file = None


class _Tee(io.TextIOBase):
    """A text stream that writes through to ``stream`` and copies into the log."""

    def __init__(self, stream: TextIO, log: ConsoleLog) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._log.write(text)
        return n

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:  # Rich and the progress display decide bar vs lines from the real stream
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._stream, "errors", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def log_name(argv: Sequence[str], group: Any) -> tuple[Path, str] | None:
    """``(run dir, file name)`` for a command line, or None (no ``--run-dir``, no command)."""
    words, command = [], group
    for token in argv:
        sub = getattr(command, "commands", {}).get(token)
        if sub is None:
            break
        words.append(token)
        command = sub
    run_dir = _option(argv, "--run-dir")
    if not words or run_dir is None:
        return None
    phase = _option(argv, "--phase")
    stage = _option(argv, "--stage")
    if phase is None and stage is not None:
        phase = f"stage{stage}"
    if phase is None:
        phase = {"train": "stage1", "finetune-bags": "finetune_bags"}.get(words[0])
    name = "-".join(words) + (f"_{phase}" if phase else "")
    return Path(run_dir), re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".log"


def _option(argv: Sequence[str], flag: str) -> str | None:
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


@contextmanager
def console_log(argv: Sequence[str], group: Any) -> Iterator[ConsoleLog | None]:
    """Copy stdout and stderr into ``logs/<command>_<phase>.log`` of the command's run directory."""
    target = log_name(argv, group) if int(os.environ.get("RANK", "0")) == 0 else None
    if target is None:
        yield None
        return
    run_dir, name = target
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log = ConsoleLog(run_dir, name, f"== {stamp} lvisctl {' '.join(argv)}\n")
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
    try:
        yield log
    finally:
        sys.stdout, sys.stderr = out, err
        log.close()
