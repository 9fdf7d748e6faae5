"""The one wrapper every command body goes through: options dataclasses as Typer parameters, the
distributed clean-up, printing once per job (rank 0 under torchrun) and the exit codes of a stopped run.

A command with many options declares them as a dataclass whose fields are the ``Annotated`` options of
``cli/_options.py`` (or its own); ``@command(Options)`` shows the fields to Typer as the command's
parameters (Typer reads ``inspect.signature``) and calls the body with one ``Options`` instance, so the
body has one parameter however many options there are, and ``--help`` lists them in field order.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer

# A run stopped by --max-chunks: nothing failed, the command is meant to be run again (EX_TEMPFAIL); a
# script chaining `tta-infer && evaluate` must not evaluate an older file meanwhile.
EXIT_INCOMPLETE = 75
EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C

F = TypeVar("F", bound=Callable[..., Any])
J = TypeVar("J")


class Stopped(Exception):
    """A command body stopped on purpose: the wrapper prints ``message`` once per job on stderr and exits
    with ``code`` (``EXIT_INCOMPLETE`` by default)."""

    def __init__(self, message: str, code: int = EXIT_INCOMPLETE) -> None:
        super().__init__(message)
        self.code = code


def stopped_by_max_chunks(total: int | None = None, resumed: int | None = None) -> Stopped:
    """What a run stopped by ``--max-chunks`` says (exit ``EXIT_INCOMPLETE``): how many chunks there are
    and how many an earlier run had done, where the command knows."""
    what = "all images" if total is None else f"all {total} chunks"
    before = "" if resumed is None else f" ({resumed} were done before this run)"
    return Stopped(
        f"stopped by --max-chunks before {what} were done{before}; rerun the same command to continue"
    )


def is_main_process() -> bool:
    """Rank 0 under torchrun (``RANK`` unset: a single process)."""
    return os.environ.get("RANK", "0") == "0"


def note(line: str) -> None:
    """A note on stderr, once per job (rank 0 under torchrun)."""
    if is_main_process():
        typer.echo(line, err=True)


def echo_main(line: str) -> None:
    """A line on stdout, once per job (rank 0 under torchrun)."""
    if is_main_process():
        typer.echo(line)


def options_signature(options: type) -> inspect.Signature:
    """The dataclass's fields as keyword parameters, in field order, with their ``Annotated`` types
    resolved (the modules use ``from __future__ import annotations``) and their defaults."""
    hints = typing.get_type_hints(options, include_extras=True)
    params = []
    for f in dataclasses.fields(options):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty  # a required option or argument
        kind = inspect.Parameter.KEYWORD_ONLY  # any order: a required field may follow an optional one
        params.append(inspect.Parameter(f.name, kind, default=default, annotation=hints[f.name]))
    return inspect.Signature(params, return_annotation=None)


def job_from(job: Callable[..., J], options: Any, **values: Any) -> J:
    """``job`` (a ``*Job`` dataclass) from a command's options: each job field that an option of the same
    name exists for takes the option's value (an option and a job field of one name are one thing), and
    ``values`` go on top: what the command worked out (resolved paths, parsed values, callbacks) and the
    fields whose option has another name."""
    names = {f.name for f in dataclasses.fields(job)}  # type: ignore[arg-type]
    same = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name in names}
    return job(**{**same, **values})


def command(options: type | None = None, *, distributed: bool = False) -> Callable[[F], F]:
    """Wrap a command body. With ``options`` (a dataclass) the body takes one instance of it; without,
    the body's own parameters are the command's. ``distributed``: the process group the body may have
    joined is destroyed when it returns or fails. A ``Stopped`` raised by the body becomes its line on
    stderr (rank 0) and its exit code."""

    def wrap(body: F) -> F:
        @functools.wraps(body)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return body(options(**kwargs)) if options is not None else body(*args, **kwargs)
            except Stopped as stop:
                note(str(stop))
                raise typer.Exit(stop.code) from None
            finally:
                if distributed:
                    from lvisctl.engine.distributed import cleanup_distributed

                    cleanup_distributed()

        run.body = body  # type: ignore[attr-defined]  # what runs, with its own parameters (tests read it)
        if options is not None:
            signature = options_signature(options)
            run.__signature__ = signature  # type: ignore[attr-defined]
            run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
            del run.__wrapped__  # type: ignore[attr-defined]  # inspect must not look through to the body
        return run  # type: ignore[return-value]

    return wrap
