"""Which categories an imported model should predict, and which ones its classifier was trained on.

Targets: the run's training data (as ``train`` finds it: ``data.train`` or the run's training dataset),
else the LVIS v1 table shipped in ``lvisctl/data`` (ids 1..1203 with names, r/c/f and training image
counts; the instance counts are not part of the table, so the image counts stand in for them).

Sources: a classifier's output slots described by category ids (torchvision's 91 COCO slots are the COCO
ids themselves; mmdet / detectron2 LVIS v1 models use the LVIS ids in increasing order, COCO models the 80
COCO ids in increasing order) and, where the checkpoint says so, class names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvisctl.data.categories import CategoryMap, CategoryStats

LVIS_V1_TRAIN_IMAGES = 100_170
# COCO's 80 category ids (torchvision's 91 slots are 0 = background and ids 1..90, 10 of them unused)
COCO_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def lvis_v1_stats() -> CategoryStats:
    """The LVIS v1 categories as ``CategoryStats`` (image counts from the official train file)."""
    from lvisctl.data.synth import load_category_table  # the table shipped with the data layer

    rows = sorted(load_category_table(), key=lambda r: r["id"])
    counts = np.asarray([r["image_count"] for r in rows], dtype=np.int64)
    return CategoryStats(
        category_map=CategoryMap(r["id"] for r in rows),
        names=tuple(r["name"] for r in rows),
        image_count=counts,
        instance_count=counts.copy(),
        frequency=tuple(r["frequency"] for r in rows),
        num_images=LVIS_V1_TRAIN_IMAGES,
    )


@dataclass(frozen=True)
class SourceClasses:
    """A foreign classifier's foreground slots in its output order: category ids and/or names."""

    count: int
    ids: tuple[int, ...] | None = None
    names: tuple[str, ...] | None = None
    description: str = ""


def default_source_classes(count: int, names: tuple[str, ...] | None = None) -> SourceClasses:
    """mmdet / detectron2 conventions: 1,203 slots = LVIS v1 ids, 80 = COCO ids, both in id order."""
    if count == 1203:
        return SourceClasses(count, tuple(range(1, 1204)), names, "LVIS v1 (1,203 classes)")
    if count == len(COCO_IDS):
        return SourceClasses(count, COCO_IDS, names, "COCO (80 classes)")
    return SourceClasses(count, None, names, f"{count} classes")


def classes_match(source: SourceClasses, target: CategoryStats) -> bool:
    """Same count and order: by names when both sides have them, else by category ids."""
    if source.count != target.num_classes:
        return False
    if source.names is not None and all(n and not n.isdigit() for n in target.names):
        return tuple(source.names) == tuple(target.names)
    return source.ids is not None and tuple(source.ids) == tuple(target.category_map.cat_ids)
