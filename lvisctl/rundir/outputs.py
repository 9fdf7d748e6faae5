"""Rules every command applies to the files it writes, wherever they are (inside a run dir or not).

- :func:`refuse_inputs_as_outputs`: an output that is one of the command's own inputs is refused, with or
  without ``--overwrite`` (``--overwrite`` replaces old outputs, never what the command is reading);
- :func:`output_lock`: one writer per output file. A run directory's phase lock only serialises writers of
  the same run; two commands of different run dirs (or none) writing one ``--out`` would otherwise both
  succeed, the second silently replacing the first's registered file. The lock is a POSIX record lock on
  ``.<name>.lock`` next to the output (the same mechanism as the phase locks: dropped by the kernel when
  the holder dies).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from lvisctl.errors import LvisctlError
from lvisctl.rundir.lock import file_lock


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file: equal after resolving symlinks, or (both existing) one inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs_as_outputs(
    outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str] | None]
) -> None:
    """Raise when an output resolves to an input (symlinks and hard links included).

    Call it before any work: ``ensemble A.segm.json B.segm.json --out A.json --overwrite`` would
    otherwise replace its own input with the fusion, ``evaluate R.json --out R.json`` the results it
    scored with the metrics.
    """
    given = [Path(i).expanduser() for i in inputs if i is not None]
    for out in outputs:
        target = Path(out).expanduser()
        for source in given:
            if _same_file(target, source):
                raise LvisctlError(
                    f"{target}: is also an input of this command ({source}); an output never replaces an "
                    "input, --overwrite or not: choose another output path"
                )


def output_lock_path(path: str | os.PathLike[str]) -> Path:
    target = Path(path).expanduser().resolve()
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(paths: Iterable[str | os.PathLike[str]]) -> Iterator[None]:
    """Hold the writer lock of every output in ``paths`` (sorted, so two commands never deadlock) for the
    ``with`` body. A second writer of any of them stops at once with one line naming the holder. Check
    whether the outputs exist *inside* the block: a writer that finished just before would otherwise be
    replaced without ``--overwrite``."""
    with contextlib.ExitStack() as stack:
        for lock in sorted({output_lock_path(p) for p in paths}):
            stack.enter_context(file_lock(lock, what=f"output {lock.name[1:-5]}", where=lock.parent))
        yield
