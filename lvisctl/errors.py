"""User-facing errors.

Raise :class:`LvisctlError` for anything the user can fix (a bad file, a missing artifact, a wrong
option). The CLI prints its message as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

import re
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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def printable(text: str) -> str:
    """``text`` as one clean line: terminal escapes dropped, control characters (NUL, tabs, newlines)
    shown as escapes or spaces, no leading/trailing blanks (a message never starts with an empty line)."""
    text = _ANSI.sub("", text).strip()
    out = []
    for ch in text:
        if ch in "\n\r\t":
            out.append(" ")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return re.sub(r" {2,}", " ", "".join(out))


def torch_load_problem(err: BaseException, limit: int = 200) -> str:
    """What a failed ``torch.load(weights_only=True)`` means, in our words.

    torch's own text spans several lines, carries terminal escapes and advises ``weights_only=False``
    (running the file's code): never passed on. A refused class is named instead."""
    text = str(err)
    found = _UNSUPPORTED_GLOBAL.search(text)
    if found:
        return (
            f"it holds an object of class {found.group(1)}, which a safe (weights-only) load refuses; "
            "not a plain checkpoint"
        )
    lines = [line for line in _ANSI.sub("", text).splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    if "weights_only" in first or "Weights only load failed" in first:
        first = "a safe (weights-only) load refused it"
    return printable(first)[:limit]
