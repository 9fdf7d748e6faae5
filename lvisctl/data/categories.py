"""Category ids <-> contiguous class indices, and the per-class statistics long-tail methods need.

LVIS category ids are sparse (1..1203 in v1, and subsets in custom files). Models work with contiguous
indices ``1..K`` and reserve ``0`` for background, as torchvision does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


class CategoryMap:
    """Bidirectional map between LVIS category ids and contiguous class indices (1..K; 0 = background)."""

    def __init__(self, cat_ids: Iterable[int]) -> None:
        self.cat_ids: list[int] = sorted(int(c) for c in cat_ids)
        self._index = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}

    def __len__(self) -> int:
        return len(self.cat_ids)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K."""
        return len(self.cat_ids)

    def index(self, cat_id: int) -> int:
        return self._index[int(cat_id)]

    def indices(self, cat_ids: Iterable[int]) -> list[int]:
        return [self._index[int(c)] for c in cat_ids if int(c) in self._index]

    def cat_id(self, index: int) -> int:
        if not 1 <= index <= len(self.cat_ids):
            raise IndexError(f"class index {index} outside 1..{len(self.cat_ids)}")
        return self.cat_ids[index - 1]

    def __contains__(self, cat_id: object) -> bool:
        return cat_id in self._index


@dataclass(frozen=True)
class CategoryStats:
    """Per-class statistics of a training set, in contiguous index order (entry ``i`` is class ``i + 1``).

    ``image_count`` is the number of training images containing the class (LVIS's definition, used by
    RFS and by EQL's frequency threshold); ``instance_count`` the number of annotated instances (used by
    Balanced GroupSoftmax's bins); ``frequency`` the r/c/f tag.
    """

    category_map: CategoryMap
    names: tuple[str, ...]
    image_count: np.ndarray
    instance_count: np.ndarray
    frequency: tuple[str, ...]
    num_images: int

    @property
    def num_classes(self) -> int:
        return self.category_map.num_classes

    @property
    def image_frequency(self) -> np.ndarray:
        """Fraction of training images containing each class (f_j in EQL, f(c) in RFS)."""
        return self.image_count / max(self.num_images, 1)

    def to_dict(self) -> dict:
        """JSON-able form, stored in checkpoints so a model can be rebuilt without the training file."""
        return {
            "cat_ids": list(self.category_map.cat_ids),
            "names": list(self.names),
            "image_count": [int(x) for x in self.image_count],
            "instance_count": [int(x) for x in self.instance_count],
            "frequency": list(self.frequency),
            "num_images": int(self.num_images),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> CategoryStats:
        return cls(
            category_map=CategoryMap(data["cat_ids"]),
            names=tuple(data["names"]),
            image_count=np.asarray(data["image_count"], dtype=np.int64),
            instance_count=np.asarray(data["instance_count"], dtype=np.int64),
            frequency=tuple(data["frequency"]),
            num_images=int(data["num_images"]),
        )

    @classmethod
    def from_lvis(
        cls,
        categories: Mapping[int, Mapping],
        anns_by_image: Mapping[int, Sequence[Mapping]],
        num_images: int | None = None,
    ) -> CategoryStats:
        """Count from annotations (not from the file's ``image_count`` fields, which a subset would break).

        The r/c/f tag is taken from the category record: it is part of the LVIS definition of the split.
        """
        cmap = CategoryMap(categories)
        images = np.zeros(len(cmap), dtype=np.int64)
        instances = np.zeros(len(cmap), dtype=np.int64)
        for anns in anns_by_image.values():
            present = set()
            for ann in anns:
                idx = cmap.index(ann["category_id"]) - 1
                instances[idx] += 1
                present.add(idx)
            for idx in present:
                images[idx] += 1
        return cls.from_counts(
            categories, images, instances, len(anns_by_image) if num_images is None else num_images
        )

    @classmethod
    def from_counts(
        cls, categories: Mapping[int, Mapping], images: np.ndarray, instances: np.ndarray, num_images: int
    ) -> CategoryStats:
        """Stats from per-class image / instance counts in ``CategoryMap(categories)`` order; names and the
        r/c/f tags from the category records."""
        cmap = CategoryMap(categories)
        ordered = [categories[c] for c in cmap.cat_ids]
        return cls(
            category_map=cmap,
            names=tuple(str(c.get("name", c["id"])) for c in ordered),
            image_count=images,
            instance_count=instances,
            frequency=tuple(str(c.get("frequency", "f")) for c in ordered),
            num_images=num_images,
        )
