"""The records of a loaded LVIS file (:class:`LvisData`, :class:`ImageRoot`) and its segmentations:
decoding to masks / RLE (pycocotools), checking RLE strings, writing polygons back out as json."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvisctl.data.categories import CategoryStats
from lvisctl.data.formats import find_image

FREQUENCIES = ("r", "c", "f")


@dataclass
class LvisData:
    """A loaded LVIS file. ``anns_by_image`` has an entry (maybe empty) for every image.

    Polygon segmentations are lists of float32 arrays (compact); use :func:`ann_to_mask` to decode and
    :func:`annotation_to_json` to write an annotation back out.
    """

    path: Path
    image_root: Path
    images: dict[int, dict]
    categories: dict[int, dict]
    anns_by_image: dict[int, list[dict]]
    has_annotations: bool = True
    info: dict = field(default_factory=dict)
    licenses: list = field(default_factory=list)
    image_root_source: str = "the json's folder"  # what set image_root, for "image not found" messages

    def image_path(self, image_id: int) -> Path:
        """Where the image file lives: ``coco_url`` as detectron2, then ``file_name`` as mmdet
        (:mod:`lvisctl.data.formats`)."""
        return find_image(self.image_root, self.images[image_id])

    def image_hw(self, image_id: int) -> tuple[int, int]:
        """The json's ``(height, width)`` of an image (what its file must decode to)."""
        record = self.images[image_id]
        return int(record["height"]), int(record["width"])

    def category_stats(self) -> CategoryStats:
        """Per-class image/instance counts counted from this file's annotations (r/c/f from the records)."""
        return CategoryStats.from_lvis(self.categories, self.anns_by_image, num_images=len(self.images))

    def annotations(self) -> Iterator[dict]:
        for anns in self.anns_by_image.values():
            yield from anns

    @property
    def num_annotations(self) -> int:
        return sum(len(a) for a in self.anns_by_image.values())


@dataclass(frozen=True)
class ImageRoot:
    """Where image files are looked up, and which setting said so (named in "not found" messages)."""

    path: Path
    source: str


# ---------------------------------------------------------------------------------------- masks
def ann_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Decode one annotation's segmentation (polygons, uncompressed or compressed RLE) to HxW uint8."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(ann_to_rle(ann, height, width)).astype(np.uint8)


def ann_to_rle(ann: dict, height: int, width: int) -> dict:
    """The segmentation as one compressed RLE (pycocotools format)."""
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, list):  # polygons: rasterise each and take the union (< 3 points: no pixels)
        polys = [np.asarray(p, dtype=np.float64) for p in seg if len(p) >= 6]
        if not polys:
            return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(seg["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, height, width)
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def rle_string_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), checked.

    Each run is a little-endian base-32 number, 5 bits per character ('0' + value, bit 0x20 = "more
    follows", bit 0x10 of the last character = sign), runs after the second stored as the difference
    to the run two before. Raises ``ValueError`` for a character outside '0'..'o' or a string that ends
    inside a number.
    """
    data = counts.encode() if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    pos = 0
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(data):
                raise ValueError("the counts string ends in the middle of a number")
            c = data[pos] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(data[pos])!r} is not an RLE counts character")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_problem(seg: dict, height: int, width: int) -> str | None:
    """What is wrong with an RLE segmentation on an image of ``height x width`` (None if nothing).

    The runs must be non-negative integers that add up to exactly ``h * w``: a short RLE decodes to
    uninitialised memory in pycocotools (a random mask, then a negative or NaN mask loss), a long one
    writes past the mask.
    """
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        return f"RLE size {size!r} is not [height, width]"
    if list(size) != [height, width]:
        return f"RLE size {size} != image size [{height}, {width}]"
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(is_int(v) and v >= 0 for v in counts):
            return "RLE counts must be non-negative integers"
        runs = counts
    elif isinstance(counts, (str, bytes)):
        try:
            runs = rle_string_counts(counts)
        except ValueError as err:
            return f"RLE counts string is damaged ({err})"
        if any(r < 0 for r in runs):
            return "RLE counts string decodes to a negative run"
    else:
        return "RLE counts must be a string or a list of integers"
    total = sum(runs)
    if total != height * width:
        return f"RLE runs cover {total} pixels, not height x width = {height * width}"
    return None


def segmentation_to_json(seg: Any) -> Any:
    """Polygons as plain lists rounded to 2 decimals (the LVIS files' precision); RLE unchanged."""
    if isinstance(seg, list):
        return [[round(float(v), 2) for v in np.asarray(p).tolist()] for p in seg]
    return seg


def annotation_to_json(ann: dict) -> dict:
    return {**ann, "segmentation": segmentation_to_json(ann["segmentation"])}


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
