"""User-facing errors.

Raise :class:`LvisctlError` for anything the user can fix (a bad file, a missing artifact, a wrong
option). The CLI prints its message as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class LvisctlError(Exception):
    """An error caused by user input; ``str(err)`` is the one line shown to the user."""

    exit_code = 2


def file_error(path: object, problem: str) -> LvisctlError:
    """Build the standard ``<file>: <problem>`` error."""
    return LvisctlError(f"{path}: {problem}")
