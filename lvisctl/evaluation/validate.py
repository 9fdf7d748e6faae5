"""The one entry point that decides whether a results file (or list) may be scored or submitted.

``validate(results, gt)`` returns when every detection is well-formed for ``gt`` and otherwise raises one
``LvisctlError`` line naming the file and its problems. Callers (``evaluate``, ``submit``, the extra
metrics) use nothing else; the ways it gets there are its own business:

* a parsed list: the exact Python check (``results_io.validate_results``), detection by detection;
* a file: the strict compiled reader (``results_parse``, the one that feeds ``evaluate``'s numbers), which
  vouches only for files the exact check accepts (strict json, integer ids, finite numbers, RLE strings
  whose runs cover exactly h x w, sizes equal to the image's); anything else is parsed in Python and
  checked exactly, which names the problem (or passes a valid layout the reader does not know).

What is refused, with or without the screen (``tests/unit/test_eval_validate.py`` holds one case per
class): a file that is not a json list of objects; unknown image ids (all unknown: "another split");
unknown category ids; scores that are not finite numbers; ``bbox`` that is not 4 finite numbers or has a
negative side;
``bbox`` / ``segmentation`` on some detections only; a segmentation that is not compressed
RLE; an RLE whose size is not its image's; an RLE string with foreign characters, cut mid-number, or
whose runs do not add up to exactly h x w. ``for_submission`` adds the server's rules (scores in [0, 1], boxes
inside the image, at most 300 detections per image, masks present).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lvisctl.evaluation.results_io import ImageTable, load_results, validate_results
from lvisctl.evaluation.results_parse import reader_vouches


def _table(gt: Any) -> ImageTable:
    """An ``ImageTable`` from what callers hold: the table itself or a loaded ground truth / image info."""
    if isinstance(gt, ImageTable):
        return gt
    table = getattr(gt, "table", None)
    if isinstance(table, ImageTable):
        return table
    raise TypeError(f"validate: gt must be an ImageTable or carry one as .table, got {type(gt).__name__}")


def validate(
    results: list[Any] | str | os.PathLike[str],
    gt: Any,
    *,
    source: object | None = None,
    for_submission: bool = False,
) -> None:
    """Check ``results`` (a parsed list or a results file) against ``gt``; one error line if anything is
    off."""
    table = _table(gt)
    if not isinstance(results, (str, os.PathLike)):  # parsed json: a list, or whatever else was given
        validate_results(results, table, source=source or "results", for_submission=for_submission)
        return
    path = Path(results)
    source = source or path
    if not for_submission and reader_vouches(path, table):
        return
    # Slow but exact: parse in Python and name every problem (it passes when the reader was merely
    # over-cautious, e.g. about a json layout it does not know).
    validate_results(load_results(path), table, source=source, for_submission=for_submission)
