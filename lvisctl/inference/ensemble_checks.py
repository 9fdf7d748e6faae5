"""What ``lvisctl ensemble`` accepts: its options (checked while the command line is parsed) and its input
results files (checked by the validator ``evaluate`` and ``submit`` use, before anything is fused).

Fused scores are weighted means of the inputs' scores: a NaN or infinite weight makes every output score
NaN, a score outside [0, 1] (or a string) is not a probability to average, and a category the images'
json lacks would be scored by nobody. Boxes are fused at an IoU in (0, 1]; ``--skip-score`` must leave
some boxes, so it is below 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError


def parse_weights(text: str, num_inputs: int | None = None) -> list[float]:
    """``--weights 2,1``: one finite, positive number per results file."""
    try:
        weights = [float(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise LvisctlError(f"--weights {text!r}: expected numbers separated by commas, e.g. 2,1") from None
    if not weights:
        raise LvisctlError(f"--weights {text!r}: expected numbers separated by commas, e.g. 2,1")
    bad = [w for w in weights if not math.isfinite(w) or w <= 0]
    if bad:
        raise LvisctlError(
            f"--weights {text!r}: every weight must be a finite number > 0 (got {bad[0]}); "
            "leave a results file out instead of weighting it 0"
        )
    if num_inputs is not None and len(weights) != num_inputs:
        raise LvisctlError(f"--weights {text!r}: {len(weights)} weights for {num_inputs} results files")
    return weights


def check_iou(value: float) -> float:
    """``--iou``: in (0, 1]."""
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise LvisctlError(f"--iou {value}: must be in (0, 1] (the IoU at which boxes are fused)")
    return value


def check_skip_score(value: float) -> float:
    """``--skip-score``: in [0, 1) (1 or more would drop every box: an empty file)."""
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise LvisctlError(f"--skip-score {value}: must be in [0, 1) (boxes scoring below it are ignored)")
    return value


def image_table(images: Path | None) -> Any:
    """The ``ImageTable`` of ``--images`` (sizes and categories), or ``None``."""
    if images is None:
        return None
    from lvisctl.evaluation.submission import load_image_info

    return load_image_info(images).table


def check_results_files(files: Sequence[tuple[Path, list[Any]]], table: Any) -> None:
    """Each parsed results file of one input (a ``tta-infer`` pair, or one file) through ``validate``
    (the checker of ``evaluate`` / ``submit``), plus scores in [0, 1]. Without ``--images`` the table is
    the input's own images (from its masks) and any integer category id."""
    from lvisctl.evaluation.results_io import ImageTable
    from lvisctl.evaluation.validate import validate

    if table is None:
        sizes = {
            r["image_id"]: tuple(r["segmentation"]["size"])
            for _, records in files
            for r in records
            if isinstance(r, dict) and isinstance(r.get("segmentation"), dict) and _size(r["segmentation"])
        }
        cats = {r.get("category_id") for _, records in files for r in records if isinstance(r, dict)}
        ints = frozenset(c for c in cats if isinstance(c, int) and not isinstance(c, bool))
        table = ImageTable(sizes=sizes, cat_ids=ints, path="its own images")
    for path, records in files:
        validate(records, table, source=path)
        _check_score_range(path, records)


def _size(seg: dict) -> bool:
    size = seg.get("size")
    return isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)


def _check_score_range(path: Path, records: list[Any]) -> None:
    bad = [i for i, r in enumerate(records) if not 0.0 <= r["score"] <= 1.0]
    if bad:
        first = bad[0]
        raise LvisctlError(
            f"{path}: {len(bad)} scores outside [0, 1] (e.g. result {first}: {records[first]['score']!r}); "
            "the ensemble averages scores as probabilities"
        )
