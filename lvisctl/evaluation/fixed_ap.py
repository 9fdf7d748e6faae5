"""Fixed AP (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the Details", 2021).

The 300-per-image cap of standard LVIS AP lets a detector trade rare-class recall against frequent-class
detections in the same image, so AP depends on how scores are calibrated *across* categories. Fixed AP
removes the per-image cap and instead keeps the top K detections of each category over the whole
dataset (K = 10,000 for LVIS), then applies the usual federated protocol (lvis-api with ``max_dets=-1``:
no cap of any kind, not even per image and category). Only the AP keys are reported: there is no
per-image detection budget for the AR@300 family to refer to. Computed by ``streaming_eval``, image by
image over the parsed results, so it scales to LVIS val.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TOP_K_PER_CATEGORY = 10_000
FIXED_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def top_k_per_category(
    dets: Sequence[Mapping[str, Any]], k: int = TOP_K_PER_CATEGORY
) -> list[Mapping[str, Any]]:
    """The ``k`` highest-scoring detections of every category (file order breaks ties), in file order."""
    if not dets:
        return []
    cats = np.fromiter((d["category_id"] for d in dets), dtype=np.int64, count=len(dets))
    scores = np.fromiter((d["score"] for d in dets), dtype=np.float64, count=len(dets))
    order = np.lexsort((np.arange(len(dets)), -scores, cats))  # by category, then score desc, then file order
    sorted_cats = cats[order]
    first_of_cat = np.searchsorted(sorted_cats, sorted_cats, side="left")
    rank = np.arange(len(order)) - first_of_cat
    keep = np.sort(order[rank < k])
    return [dets[i] for i in keep]


def fixed_tasks(iou_types: Sequence[str], k: int = TOP_K_PER_CATEGORY) -> list[Any]:
    """The ``streaming_eval`` tasks of Fixed AP: no per-image cap, the top ``k`` per category."""
    from lvisctl.evaluation.streaming_eval import Task

    return [Task(t, max_dets=-1, top_k=k) for t in iou_types]


def fixed_metrics(summary: Mapping[str, float], per_cat: Mapping[int, float]) -> Any:
    """A Fixed AP task's result as ``IouTypeMetrics``: the AP keys only."""
    from lvisctl.evaluation.lvis_metrics import IouTypeMetrics

    return IouTypeMetrics(metrics={key: summary[key] for key in FIXED_KEYS}, per_category_ap=dict(per_cat))


def fixed_ap_streaming(gt: Any, dets: Any, iou_types: Sequence[str], *, k: int = TOP_K_PER_CATEGORY):
    """Fixed AP per iou type from a hotcoco dataset of the uncapped results (what ``evaluate`` parsed),
    image by image (``streaming_eval``): no Python object per detection outlives its image.

    ``gt`` is an :class:`~lvisctl.evaluation.lvis_metrics.LvisGroundTruth`.
    """
    from lvisctl.evaluation.streaming_eval import stream_federated

    results = stream_federated(gt, dets, fixed_tasks(iou_types, k))
    return {t: fixed_metrics(*r) for t, r in zip(iou_types, results, strict=True)}


def fixed_ap(
    gt: Any, dets: Sequence[Mapping[str, Any]], iou_types: Sequence[str], *, k: int = TOP_K_PER_CATEGORY
):
    """Fixed AP per iou type of detections given as dicts: :func:`fixed_ap_streaming` on them.

    ``gt`` is an :class:`lvisctl.evaluation.lvis_metrics.LvisGroundTruth`.
    """
    from lvisctl.evaluation.native_output import quiet_native_output

    with quiet_native_output():
        parsed = gt.coco.load_res(list(dets))
    return fixed_ap_streaming(gt, parsed, iou_types, k=k)
