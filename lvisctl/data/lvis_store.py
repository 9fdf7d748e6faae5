"""A loaded LVIS file in a few flat numpy buffers: what DataLoader workers share without copying it.

A forked DataLoader worker shares its parent's memory page by page until it writes to a page. Python
objects are written to by merely being read (reference counts) and by every full garbage collection
(gc headers), so an ``LvisData`` of the train file (millions of dicts, lists and arrays, ~2.5 GB) is
copied into each worker bit by bit: the copy-on-read growth detectron2 avoids by serialising its
dataset into one numpy byte buffer plus offsets (``detectron2/data/common.py``,
``NumpySerializedList``). ``LvisStore`` does the same with a handful of numpy arrays, whatever the
number of images:

* per image, its record and its annotations (polygon segmentations left out) as compact JSON bytes;
* the polygons as one float32 coordinate buffer with end offsets (per polygon, per annotation);
* the images' ids (sorted, for a binary search) and the category id of every annotation.

JSON rather than pickle keeps a damaged or foreign buffer (the disk cache, :mod:`lvis_cache`) from
running code when read, the rule ``torch.load(weights_only=True)`` follows for checkpoints. Records
are decoded on access and equal the ``LvisData`` ones (the same dicts, the same float32 polygons), so
training sees the same samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lvisctl.data.categories import CategoryMap, CategoryStats
from lvisctl.data.lvis import LvisData

# name -> dtype of every array a store consists of (the disk cache writes and checks exactly these)
ARRAY_DTYPES: dict[str, str] = {
    "image_ids": "int64",  # in the file's order
    "image_order": "int64",  # argsort of image_ids: image_ids[image_order] is sorted
    "image_blob": "uint8",  # JSON of each image record, back to back
    "image_end": "int64",  # end offset of image i's JSON in image_blob
    "ann_blob": "uint8",  # JSON list of image i's annotations (polygon segmentation -> null)
    "ann_blob_end": "int64",
    "ann_end": "int64",  # image i's annotations are global annotations ann_end[i-1]..ann_end[i]
    "ann_category": "int64",  # category id of every annotation (class statistics without decoding)
    "ann_poly_end": "int64",  # annotation a's polygons are polygons ann_poly_end[a-1]..ann_poly_end[a]
    "poly_end": "int64",  # polygon p's coordinates are coords[poly_end[p-1]:poly_end[p]]
    "coords": "float32",
}


def _span(ends: np.ndarray, i: int) -> tuple[int, int]:
    return (int(ends[i - 1]) if i > 0 else 0), int(ends[i])


class _Table(Mapping):
    """Read-only ``image id -> value`` view over a store's arrays; values decoded on access."""

    def __init__(self, store: StoreArrays) -> None:
        self._s = store

    def __len__(self) -> int:
        return len(self._s.arrays["image_ids"])

    def __iter__(self) -> Iterator[int]:
        return (int(i) for i in self._s.arrays["image_ids"])

    def __contains__(self, image_id: object) -> bool:
        return self._s.position(image_id) is not None

    def __getitem__(self, image_id: Any) -> Any:
        pos = self._s.position(image_id)
        if pos is None:
            raise KeyError(image_id)
        return self._decode(pos)

    def _decode(self, pos: int) -> Any:
        raise NotImplementedError


class ImageTable(_Table):
    """``images``: id -> the LVIS image record (a fresh dict per access)."""

    def _decode(self, pos: int) -> dict:
        a, b = _span(self._s.arrays["image_end"], pos)
        return json.loads(self._s.arrays["image_blob"][a:b].tobytes())


class AnnotationTable(_Table):
    """``anns_by_image``: id -> list of annotation dicts, polygons as float32 arrays (as ``load_lvis``)."""

    def _decode(self, pos: int) -> list[dict]:
        s = self._s.arrays
        a, b = _span(s["ann_blob_end"], pos)
        anns = json.loads(s["ann_blob"][a:b].tobytes())
        first, _ = _span(s["ann_end"], pos)
        for k, ann in enumerate(anns):
            if ann["segmentation"] is None:  # validated files never have a null segmentation
                ann["segmentation"] = self._s.polygons(first + k)
        return anns


@dataclass
class StoreArrays:
    """The arrays of a store (in memory or memory-mapped from the cache) and the lookups over them."""

    arrays: dict[str, np.ndarray]

    def position(self, image_id: Any) -> int | None:
        """Index of ``image_id`` in the file's image order (binary search; no Python dict to share)."""
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            return None
        ids, order = self.arrays["image_ids"], self.arrays["image_order"]
        k = int(np.searchsorted(ids, image_id, sorter=order))
        if k < len(ids) and int(ids[order[k]]) == image_id:
            return int(order[k])
        return None

    def polygons(self, ann_index: int) -> list[np.ndarray]:
        s = self.arrays
        p0, p1 = _span(s["ann_poly_end"], ann_index)
        out = []
        for p in range(p0, p1):
            a, b = _span(s["poly_end"], p)
            out.append(np.array(s["coords"][a:b], dtype=np.float32))  # a private, writable copy
        return out


class LvisStore(LvisData):
    """An :class:`LvisData` whose ``images`` and ``anns_by_image`` are read-only views over numpy buffers.

    Everything that reads an ``LvisData`` reads a store; it cannot be modified in place.
    """

    store: StoreArrays

    def category_ids_of(self, image_id: int) -> np.ndarray:
        """Category ids of an image's annotations, without decoding them (the RFS statistics)."""
        s = self.store
        pos = s.position(image_id)
        if pos is None:
            return np.zeros(0, dtype=np.int64)
        a, b = _span(s.arrays["ann_end"], pos)
        return s.arrays["ann_category"][a:b]

    def category_stats(self) -> CategoryStats:
        """As :meth:`LvisData.category_stats`, counted with numpy over ``ann_category``."""
        s = self.store.arrays
        cmap = CategoryMap(self.categories)
        cats = np.asarray(s["ann_category"])
        index = np.searchsorted(np.asarray(cmap.cat_ids), cats)  # every id is known (validated)
        instances = np.bincount(index, minlength=len(cmap)).astype(np.int64)
        image_of = np.repeat(np.arange(len(s["ann_end"])), np.diff(s["ann_end"], prepend=0))
        pairs = np.unique(image_of * len(cmap) + index)  # one per (image, class) present
        images = np.bincount(pairs % len(cmap), minlength=len(cmap)).astype(np.int64)
        return CategoryStats.from_counts(self.categories, images, instances, len(self.images))

    @property
    def num_annotations(self) -> int:
        return len(self.store.arrays["ann_category"])


def open_store(data_fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> LvisStore:
    """A store over ``arrays`` with the small fields of ``LvisData`` (path, image root, categories, ...)."""
    sa = StoreArrays(arrays)
    store = LvisStore(images=ImageTable(sa), anns_by_image=AnnotationTable(sa), **data_fields)
    store.store = sa
    return store


def small_fields(data: LvisData) -> dict[str, Any]:
    """The ``LvisData`` fields that stay Python objects (a few thousand at most)."""
    return {
        "path": data.path,
        "image_root": data.image_root,
        "image_root_source": data.image_root_source,
        "categories": data.categories,
        "has_annotations": data.has_annotations,
        "info": data.info,
        "licenses": data.licenses,
    }


def serialize_lvis(data: LvisData) -> LvisStore:
    """The store of a loaded (validated) ``LvisData``; the result no longer refers to its records."""
    return open_store(small_fields(data), store_arrays(data))


def store_arrays(data: LvisData) -> dict[str, np.ndarray]:
    """The numpy arrays of :data:`ARRAY_DTYPES` for ``data``."""
    enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    image_ids = np.fromiter(data.images, dtype=np.int64, count=len(data.images))
    image_parts, ann_parts = [], []
    ann_count, ann_category, ann_polys, poly_sizes, coords = [], [], [], [], []
    for image_id in image_ids.tolist():
        image_parts.append(enc(data.images[image_id]).encode())
        anns = data.anns_by_image.get(image_id, [])
        plain = []
        for ann in anns:
            seg = ann["segmentation"]
            polys = seg if isinstance(seg, list) else []
            ann_polys.append(len(polys))
            poly_sizes.extend(len(p) for p in polys)
            coords.extend(polys)
            ann_category.append(ann["category_id"])
            plain.append({**ann, "segmentation": None} if isinstance(seg, list) else ann)
        ann_count.append(len(anns))
        ann_parts.append(enc(plain).encode())
    image_blob, image_end = _concat_bytes(image_parts)
    ann_blob, ann_blob_end = _concat_bytes(ann_parts)
    arrays = {
        "image_ids": image_ids,
        "image_order": np.argsort(image_ids, kind="stable"),
        "image_blob": image_blob,
        "image_end": image_end,
        "ann_blob": ann_blob,
        "ann_blob_end": ann_blob_end,
        "ann_end": np.cumsum(np.asarray(ann_count, dtype=np.int64)),
        "ann_category": np.asarray(ann_category, dtype=np.int64),
        "ann_poly_end": np.cumsum(np.asarray(ann_polys, dtype=np.int64)),
        "poly_end": np.cumsum(np.asarray(poly_sizes, dtype=np.int64)),
        "coords": np.concatenate(coords).astype(np.float32) if coords else np.zeros(0, np.float32),
    }
    return {k: np.asarray(v, dtype=ARRAY_DTYPES[k]).reshape(-1) for k, v in arrays.items()}


def _concat_bytes(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    ends = np.cumsum(np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts)))
    return np.frombuffer(b"".join(parts), dtype=np.uint8).copy(), ends


def store_problems(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """What is inconsistent in a store's arrays (a damaged cache): dtypes, lengths, offsets."""
    missing = [k for k in ARRAY_DTYPES if k not in arrays]
    if missing:
        return [f"missing array(s) {', '.join(missing)}"]
    problems = [
        f"array {k} has dtype {arrays[k].dtype}, not {dt}"
        for k, dt in ARRAY_DTYPES.items()
        if arrays[k].dtype != np.dtype(dt) or arrays[k].ndim != 1
    ]
    if problems:
        return problems
    n_images = len(arrays["image_ids"])
    checks = [  # (offsets, what they index, per-what count expected)
        ("image_end", "image_blob", n_images),
        ("ann_blob_end", "ann_blob", n_images),
        ("ann_end", "ann_category", n_images),
        ("ann_poly_end", "poly_end", len(arrays["ann_category"])),
        ("poly_end", "coords", len(arrays["poly_end"])),
    ]
    for ends_name, target, count in checks:
        ends = arrays[ends_name]
        if len(ends) != count:
            problems.append(f"array {ends_name} has {len(ends)} entries, expected {count}")
        elif count and (int(ends[-1]) != len(arrays[target]) or (np.diff(ends, prepend=0) < 0).any()):
            problems.append(f"offsets {ends_name} do not cover {target}")
    order = arrays["image_order"]
    if len(order) != n_images or (n_images and (np.sort(order) != np.arange(n_images)).any()):
        problems.append("array image_order is not a permutation of the images")
    elif n_images and (np.diff(arrays["image_ids"][order]) <= 0).any():
        problems.append("array image_order does not sort unique image ids")
    return problems
