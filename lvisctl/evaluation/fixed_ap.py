"""Fixed AP (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the Details", 2021).

The 300-per-image cap of standard LVIS AP lets a detector trade rare-class recall against frequent-class
detections in the same image, so AP depends on how scores are calibrated *across* categories. Fixed AP
removes the per-image cap and instead keeps the top K detections of each category over the whole
dataset (K = 10,000 for LVIS), then applies the usual federated protocol. Only the AP keys are
reported: there is no per-image detection budget for the AR@300 family to refer to.
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


def fixed_ap(
    gt: Any, dets: Sequence[Mapping[str, Any]], iou_types: Sequence[str], *, k: int = TOP_K_PER_CATEGORY
):
    """Fixed AP per iou type: ``{iou_type: IouTypeMetrics}`` with the AP keys and per-category AP.

    ``gt`` is an :class:`lvisctl.evaluation.lvis_metrics.LvisGroundTruth`; evaluation runs in hotcoco
    on the uncapped, per-category-limited detections.
    """
    from lvisctl.evaluation.lvis_metrics import IouTypeMetrics, quiet_native_output, run_lvis_eval

    kept = top_k_per_category(dets, k)
    with quiet_native_output():
        # cap_detections_per_image(None) marks the set as final: no default 300-per-image cap in LVISEval.
        coco_dets = gt.coco.load_res(list(kept)).cap_detections_per_image(None)
    out = {}
    for t in iou_types:
        full = run_lvis_eval(gt, coco_dets, t, source=gt.table.path)
        out[t] = IouTypeMetrics(
            metrics={key: full.metrics[key] for key in FIXED_KEYS}, per_category_ap=full.per_category_ap
        )
    return out
