"""Types of the options whose values come from a fixed set: Typer lists them in ``--help`` and Click
rejects anything else; the command bodies still receive plain strings.

The sets are spelled out here rather than imported from the layers so that ``lvisctl --help`` stays
instant; tests check that they match the layers' tables.
"""

from __future__ import annotations

from itertools import permutations
from typing import Literal

SYNTH_PRESETS = ("tiny", "demo", "val-scale", "hm")  # lvisctl.data.synth.PRESETS
PSEUDO_SOURCES = (
    "lvis",
    "openimages",
    "images",
)  # pseudolabel SOURCE (a plain argument: key=value may stand there)
PSEUDO_MODES = ("missing", "unlabeled")  # lvisctl.inference.pseudo_labels.MODES (the old --mode)
IOU_TYPES = ("segm", "bbox")  # lvisctl.evaluation.lvis_metrics.IOU_TYPES
TTA_MODES = ("plain", "paper")  # lvisctl.inference.tta (inference.tta.mode)
EXTRA_METRICS = ("boundary", "fixed")  # lvisctl.evaluation.pipeline.EXTRA_METRICS


def comma_lists(values: tuple[str, ...], *, allow_empty: bool = False) -> tuple[str, ...]:
    """Every comma-separated list of distinct ``values`` (``segm``, ``bbox``, ``segm,bbox``, ...)."""
    combos = [",".join(p) for n in range(1, len(values) + 1) for p in permutations(values, n)]
    return tuple(([""] if allow_empty else []) + combos)


SynthPreset = Literal[SYNTH_PRESETS]  # type: ignore[valid-type]
PseudoMode = Literal[PSEUDO_MODES]  # type: ignore[valid-type]
IouTypeList = Literal[comma_lists(IOU_TYPES)]  # type: ignore[valid-type]
ExtraMetricList = Literal[comma_lists(EXTRA_METRICS, allow_empty=True)]  # type: ignore[valid-type]
TtaMode = Literal[TTA_MODES]  # type: ignore[valid-type]
