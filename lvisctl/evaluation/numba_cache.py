"""Where numba keeps the evaluator's compiled kernels, so that they are compiled once per install.

numba caches a ``cache=True`` kernel next to its source (``__pycache__``), else in the user-wide cache
(``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba``), else ``NUMBA_CACHE_DIR`` when set. A wheel installed into a
read-only site-packages uses the user-wide cache; on a cluster node whose home is read-only too, numba has
no place at all and refuses to compile the kernel ("cannot cache function ...: no locator available").
``ensure_cache_dir`` is called by the kernel modules before their first ``@njit(cache=True)``: it then
points numba at a per-user folder under the temporary directory instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_KERNEL_DIR = Path(__file__).resolve().parent


def _writable(folder: Path) -> bool:
    """numba's own test: the folder can be made and a file created in it (os.access lies for root)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def user_wide_cache_dir() -> Path:
    """numba's user-wide cache folder (the same rule as numba's ``UserWideCacheLocator``)."""
    from numba.misc.appdirs import AppDirs

    return Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)


def fallback_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"lvisctl-numba-{os.getuid()}"


def ensure_cache_dir() -> Path | None:
    """Set ``NUMBA_CACHE_DIR`` when neither numba's in-tree nor its user-wide cache is writable.

    Returns the folder it chose, or None when numba's own rule already finds a writable place.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if _writable(_KERNEL_DIR / "__pycache__") or _writable(user_wide_cache_dir()):
        return None
    folder = fallback_cache_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    import numba.core.config

    numba.core.config.CACHE_DIR = str(folder)  # numba read the environment when it was imported
    return folder
