"""User-facing errors.

Raise :class:`LvisctlError` for anything the user can fix (a bad file, a missing artifact, a wrong
option). The CLI prints its message as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from collections.abc import Sequence


class LvisctlError(Exception):
    """An error caused by user input; ``str(err)`` is the one line shown to the user."""

    exit_code = 2


def file_error(path: object, problem: str) -> LvisctlError:
    """Build the standard ``<file>: <problem>`` error."""
    return LvisctlError(f"{path}: {problem}")


def raise_problems(
    path: object, problems: Sequence[str], total: int | None = None, *, max_listed: int = 5
) -> None:
    """Raise one error listing the first ``max_listed`` of all ``problems`` found in ``path`` (if any).

    Validators collect every problem of a file first, so a user fixes them in one round. ``total``: how
    many there are when only the first few were kept (default ``len(problems)``).
    """
    if not problems:
        return
    total = len(problems) if total is None else total
    shown = "; ".join(problems[:max_listed])
    extra = total - min(len(problems), max_listed)
    more = f"; ... and {extra} more" if extra > 0 else ""
    noun = "problem" if total == 1 else "problems"
    raise LvisctlError(f"{path}: {total} {noun}: {shown}{more}")
