"""The trainer's metrics store: what the loop and its hooks tell each other (detectron2's ``EventStorage``,
smaller).

A value is put under a name with the iteration it belongs to (optimizer steps done when it was put) and read
back with :meth:`MetricsStore.latest` / :meth:`MetricsStore.iteration_of`; values put with ``keep=True`` also
keep a history (evaluation results: a handful per run, never per-step tensors). The names the engine uses:

``lr``              the lr of the coming step (LR schedule hook, ``before_step``)
``losses``          the step's loss tensors before backward (the trainer; the non-finite check reads them)
``step_losses``     the step's detached losses with their total ``loss`` (the trainer, after the step)
``grad_norm``       the gradient norm of the step (gradient hook, ``after_backward``; None when not measured)
``data_time`` / ``step_time``  seconds waiting for the batch / running the step
``last_checkpoint`` the newest checkpoint artifact of the phase (rank 0; the checkpoint hook)
``val``             an evaluation's ``{metric: value}`` (evaluation hook, kept), ``best`` the best one so far
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_MISSING = object()


class MetricsStore:
    """Name -> (value, iteration), with an optional history per name."""

    def __init__(self, iteration: int = 0) -> None:
        self.iteration = iteration  # the trainer keeps it equal to its optimizer steps done
        self._latest: dict[str, tuple[Any, int]] = {}
        self._history: dict[str, list[tuple[int, Any]]] = {}

    def put(self, name: str, value: Any, *, iteration: int | None = None, keep: bool = False) -> None:
        """Record ``value`` at ``iteration`` (default: the current one); ``keep`` adds it to the history."""
        at = self.iteration if iteration is None else int(iteration)
        self._latest[name] = (value, at)
        if keep:
            self._history.setdefault(name, []).append((at, value))

    def put_many(self, values: Mapping[str, Any], *, prefix: str = "") -> None:
        for name, value in values.items():
            self.put(f"{prefix}{name}", value)

    def latest(self, name: str, default: Any = None) -> Any:
        """The newest value of ``name`` (``default`` when it was never put)."""
        entry = self._latest.get(name, _MISSING)
        return default if entry is _MISSING else entry[0]  # type: ignore[index]

    def iteration_of(self, name: str) -> int | None:
        """The iteration the newest value of ``name`` belongs to (None: never put)."""
        entry = self._latest.get(name)
        return None if entry is None else entry[1]

    def history(self, name: str) -> list[tuple[int, Any]]:
        """``(iteration, value)`` of every value put with ``keep=True``, oldest first."""
        return list(self._history.get(name, []))

    def __contains__(self, name: object) -> bool:
        return name in self._latest
