"""Leftovers of killed commands that nothing else would ever remove.

A command that builds a folder next to its target (``data synth``: ``.<out>.partial-<pid>``, renamed into
place at the end) cannot clean up after SIGKILL. The next run removes the folders whose process is gone;
a folder of a live process (a concurrent command) is kept.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete ``.<out name>.partial-<pid>`` folders next to ``out`` whose process no longer runs."""
    removed = []
    for folder in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def process_alive(pid: int) -> bool:
    """A process of this id runs on this host (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
