"""The one entry point that decides whether a results file (or list) may be scored or submitted.

``validate(results, gt)`` returns when every detection is well-formed for ``gt`` and otherwise raises one
``LvisctlError`` line naming the file and its problems. Callers (``evaluate``, ``submit``, the extra
metrics) use nothing else; the ways it gets there are its own business:

* a parsed list: the exact Python check (``results_io.validate_results``), detection by detection;
* a file being evaluated: the compiled byte screen (``results_scan``) that ran beside hotcoco's parse,
  plus hotcoco's own mask areas (hotcoco leaves an area empty where an RLE's runs do not fit). The screen
  checks every RLE's characters (hotcoco's decoder takes any byte) and decodes the runs (hotcoco's areas
  do not show runs that stop short of ``h * w``); anything it cannot vouch for (e.g. a ``-`` in a box's
  width or height) sends the file through the exact check, which names the problem;
* a file without a screen: parsed in Python and checked exactly.

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
from lvisctl.evaluation.results_scan import ScanJob, ScanSummary, scan_problems, scan_results


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
    screen: ScanJob | ScanSummary | None = None,
    parsed: Any = None,
    num_parsed: int | None = None,
) -> None:
    """Check ``results`` (a parsed list or a results file) against ``gt``; one error line if anything is off.

    ``screen``: the byte screen of the file (a running ``ScanJob`` or its summary), when one was started
    beside the evaluator's parse; ``parsed`` / ``num_parsed``: hotcoco's dataset of the same file and its
    detection count, whose mask areas vouch for the RLEs when the screen skipped decoding them.
    """
    table = _table(gt)
    if not isinstance(results, (str, os.PathLike)):  # parsed json: a list, or whatever else was given
        validate_results(results, table, source=source or "results", for_submission=for_submission)
        return
    path = Path(results)
    source = source or path
    if not for_submission and _screen_vouches(path, table, screen, parsed, num_parsed):
        return
    # Slow but exact: parse in Python and name every problem (it passes when the screen was merely
    # over-cautious, e.g. about a json layout it does not know).
    validate_results(load_results(path), table, source=source, for_submission=for_submission)


def _screen_vouches(
    path: Path, table: ImageTable, screen: ScanJob | ScanSummary | None, parsed: Any, num_parsed: int | None
) -> bool:
    summary = screen.result() if isinstance(screen, ScanJob) else screen
    if summary is None:
        if screen is not None or parsed is None:
            return False  # the side process failed (numba missing?), or nothing to check it against
        summary = _scan_or_none(path)
        if summary is None:
            return False
    count = num_parsed if num_parsed is not None else summary.num_dets
    if scan_problems(summary, count, table.sizes):
        return False
    if parsed is None:
        return summary.rles_decoded or not summary.num_segmentation
    from lvisctl.evaluation.lvis_metrics import quiet_native_output

    # hotcoco computed every detection's area: the box's w * h when the file has boxes (a negative side or
    # a NaN makes it fall outside [0, inf)), else the mask's, left empty where an RLE does not decode. The
    # screen does not read box values, so this count is their check (and the RLEs' when not decoded).
    with quiet_native_output():
        sane = len(parsed.get_ann_ids(area_rng=[0.0, float("inf")]))
    return sane == count


def _scan_or_none(path: Path) -> ScanSummary | None:
    try:
        return scan_results(path)
    except ImportError:  # numba missing
        return None
