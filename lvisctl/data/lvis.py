"""LVIS v1 annotation files, test-dev image-info files and COCO-layout image folders.

``load_lvis`` reads a file in one streaming pass. ``json.load`` of the real 1.3 GB train file builds
tens of millions of Python floats for the polygons (>10 GB); here each top-level array element is
decoded on its own (the C scanner via ``raw_decode``) and every polygon is turned into a float32 array
at once, so the floats only ever exist for one annotation at a time. RLE segmentations are kept as
they are. ``ann_to_mask`` decodes a segmentation to a mask on demand (pycocotools).

Validation collects every problem of a file (malformed records, duplicate ids, annotations on unknown
images or categories, degenerate boxes/polygons, images missing on disk) and raises one
``LvisctlError`` that names the file, gives the count and lists the first few.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvisctl.data.builtin import builtin_json, image_root_of_names, is_builtin
from lvisctl.data.categories import CategoryStats
from lvisctl.data.formats import find_image, image_relpaths, refuse_coco
from lvisctl.errors import LvisctlError, raise_problems

ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox")
IMAGE_KEYS = ("id", "width", "height")
LVIS_IMAGE_LABEL_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")
CATEGORY_KEYS = ("id", "name")
FREQUENCIES = ("r", "c", "f")
MAX_LISTED_PROBLEMS = 5
_CHUNK_CHARS = 1 << 24  # 16 M characters per read: large enough to amortise, small against the file
_WHITESPACE = re.compile(r"[ \t\n\r]*")


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


def resolve_image_root(data_cfg: Any = None, *, option: str | Path | None = None) -> ImageRoot | None:
    """The image root every command uses, in one order: the command's ``--image-root`` option, else the
    config's ``data.image_root`` (relative to ``data.root``), else None = each json's own folder.

    ``data_cfg`` is the ``data`` section of a config (a mapping; None when the command has none). The
    README's detectron2 layout sets ``data.image_root=datasets/coco`` once, and training, ``tta-infer``
    and ``pseudolabel`` (whose configs come from the checkpoint) all find ``datasets/coco/val2017/...``.
    """
    if option is not None and str(option) != "":
        return ImageRoot(Path(option).expanduser(), "--image-root")
    if data_cfg is None:
        return None
    path = configured_path(data_cfg, "image_root")
    if path is None:
        found = image_root_of_names(data_cfg)  # data.train=lvis_v1_train brings datasets/coco
        return ImageRoot(*found) if found else None
    root = str(data_cfg.get("root", "") or "")
    source = (
        "data.root + data.image_root"
        if root and not Path(str(data_cfg.get("image_root"))).is_absolute()
        else "data.image_root"
    )
    return ImageRoot(path, source)


def image_relpath(image: dict) -> str:
    """The preferred place of an image under the root: the last two parts of ``coco_url``
    (``train2017/000...139.jpg``), else ``file_name`` (COCO-2014 prefix dropped); see ``formats``."""
    return image_relpaths(image)[0]


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
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"RLE size {size!r} is not [height, width]"
    if list(size) != [height, width]:
        return f"RLE size {size} != image size [{height}, {width}]"
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts):
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


# ---------------------------------------------------------------------------------------- loading
def load_lvis(
    path: str | Path,
    *,
    image_root: str | Path | ImageRoot | None = None,
    check_images: bool | None = False,
    decode_images: bool = False,
) -> LvisData:
    """Load and validate an LVIS v1 annotation file or a test-dev style image-info file.

    ``image_root`` defaults to the json's folder (:func:`resolve_image_root` gives the one every
    command uses). With ``check_images`` every image file must exist, be a readable image (header and
    end marker; ``decode_images`` decodes the pixels too) and have the json's size; ``None`` checks
    them when they are reachable (:func:`images_reachable`).
    Raises one ``LvisctlError`` listing the problems found.
    """
    data, problems = _load_unchecked(path, image_root)
    if check_images is None:
        check_images = images_reachable(data)
    problems.extend(lvis_problems(data, check_images=check_images or decode_images, decode=decode_images))
    _raise_if_any(data.path, problems)
    return data


def images_reachable(data: LvisData) -> bool:
    """Whether the images can be checked: some of the first images exist under the image root."""
    return any(data.image_path(i).is_file() for i in sorted(data.images)[:20])


def validate_lvis(
    path: str | Path,
    *,
    image_root: str | Path | ImageRoot | None = None,
    check_images: bool | None = True,
    decode_images: bool = False,
) -> LvisData:
    """``load_lvis`` with the image check on by default (``lvisctl data validate``; None = when the
    images are reachable)."""
    return load_lvis(path, image_root=image_root, check_images=check_images, decode_images=decode_images)


def _load_unchecked(
    path: str | Path, image_root: str | Path | ImageRoot | None
) -> tuple[LvisData, list[str]]:
    path = Path(path)
    if path.is_dir():
        raise LvisctlError(f"{path}: is a directory, not an LVIS json file")
    if not path.is_file():
        raise LvisctlError(f"{path}: file not found")
    problems: list[str] = []
    images: list[dict] = []
    categories: list[dict] = []
    annotations: list[dict] = []
    handlers: dict[str, Callable[[Any], None]] = {
        "images": images.append,
        "categories": categories.append,
        "annotations": lambda ann: annotations.append(_compact_annotation(ann, problems)),
    }
    # utf-8-sig: a byte-order mark (some Windows editors write one) is accepted, as json.load does not
    with open(path, encoding="utf-8-sig") as fh:
        other = _StreamParser(fh, path).parse_object(handlers)
    has_annotations = "annotations" in other["_seen"]
    if has_annotations:
        refuse_coco(path, categories, images)
    for key in ("images", "categories"):
        if key not in other["_seen"]:
            problems.append(f"missing top-level key '{key}'")
    if isinstance(image_root, ImageRoot):
        root, root_source = image_root.path, image_root.source
    elif image_root is not None:
        root, root_source = Path(image_root).expanduser(), "--image-root"
    else:
        root, root_source = path.parent, "the json's folder"
    data = LvisData(
        path=path,
        image_root=root,
        image_root_source=root_source,
        images={},
        categories={},
        anns_by_image={},
        has_annotations=has_annotations,
        info=other.get("info") if isinstance(other.get("info"), dict) else {},
        licenses=other.get("licenses") if isinstance(other.get("licenses"), list) else [],
    )
    problems.extend(_index(data, images, categories, annotations))
    return data, problems


def _raise_if_any(path: Path, problems: list[str]) -> None:
    raise_problems(path, problems, max_listed=MAX_LISTED_PROBLEMS)


def _compact_annotation(ann: Any, problems: list[str]) -> Any:
    """Replace polygon lists by float32 arrays while the annotation is the only one in Python floats."""
    if not isinstance(ann, dict):
        return ann
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        try:
            ann["segmentation"] = [np.asarray(p, dtype=np.float32) for p in seg]
        except (TypeError, ValueError):
            problems.append(f"annotation {ann.get('id')}: segmentation is not a list of number lists")
    return ann


class _StreamParser:
    """Parses the top-level object of an LVIS file, handing array elements to callbacks one by one."""

    def __init__(self, fh: Any, path: Path) -> None:
        self.fh, self.path = fh, path
        self.buf, self.pos, self.eof = "", 0, False
        self.lines_before = 0  # newlines in the text already dropped from the buffer (for error positions)
        self.decoder = json.JSONDecoder()

    def _fill(self) -> None:
        self.lines_before += self.buf.count("\n", 0, self.pos)
        try:
            chunk = self.fh.read(_CHUNK_CHARS)
        except UnicodeDecodeError as err:
            bad = err.object[err.start : err.start + 1].hex()
            line = self.lines_before + self.buf.count("\n", self.pos) + 1
            raise LvisctlError(
                f"{self.path}: not UTF-8 text (byte 0x{bad} on or after line {line}); "
                "LVIS json files must be UTF-8"
            ) from None
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        self.eof = not chunk

    def _skip_ws(self) -> None:
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return
            self._fill()

    def _peek(self) -> str:
        self._skip_ws()
        return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def _error(self, problem: str, pos: int | None = None) -> LvisctlError:
        pos = self.pos if pos is None else pos
        line = self.lines_before + self.buf.count("\n", 0, pos) + 1
        col = pos - self.buf.rfind("\n", 0, pos)
        return LvisctlError(f"{self.path}: not valid json ({problem} at line {line} column {col})")

    def _expect(self, chars: str) -> str:
        ch = self._peek()
        if not ch or ch not in chars:
            found = repr(ch) if ch else "end of file"
            raise self._error(f"expected {' or '.join(repr(c) for c in chars)}, found {found}")
        self.pos += 1
        return ch

    def _value(self) -> Any:
        self._skip_ws()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self.eof:
                    raise self._error(err.msg, err.pos) from None
                self._fill()
                continue
            except RecursionError:  # "[[[[..." 100k deep: the decoder recurses per level
                raise self._error("nested too deeply to be an LVIS file") from None
            if end == len(self.buf) and not self.eof:  # a number may continue in the next chunk
                self._fill()
                continue
            self.pos = end
            return value

    def parse_object(self, handlers: dict[str, Callable[[Any], None]]) -> dict[str, Any]:
        """Top-level keys with a handler and an array value are streamed; others are returned."""
        first = self._peek()
        if first == "[":
            raise LvisctlError(
                f"{self.path}: valid json, but the top level is a list; an LVIS file must be a json object "
                "with 'images', 'categories' and 'annotations' (a list is a results file)"
            )
        if first != "{":
            raise self._error("an LVIS file must be a json object")
        self.pos += 1
        other: dict[str, Any] = {"_seen": set()}
        if self._peek() == "}":
            self.pos += 1
        else:
            while True:
                key = self._value()
                if not isinstance(key, str):
                    raise self._error("expected a key string")
                self._expect(":")
                other["_seen"].add(key)
                if key in handlers and self._peek() == "[":
                    self._stream_array(handlers[key])
                else:
                    other[key] = self._value()
                if self._expect(",}") == "}":
                    break
        if self._peek():
            raise self._error("extra data after the top-level object")
        return other

    def _stream_array(self, handle: Callable[[Any], None]) -> None:
        self.pos += 1  # the '['
        if self._peek() == "]":
            self.pos += 1
            return
        while True:
            handle(self._value())
            if self._expect(",]") == "]":
                return


# ---------------------------------------------------------------------------------------- checks
def _index(data: LvisData, images: list, categories: list, annotations: list) -> list[str]:
    """Fill ``data``'s dicts from the raw records; return the per-record and duplicate-id problems."""
    problems: list[str] = []
    for img in images:
        if _check_image(img, data.has_annotations, problems):
            _add_unique(data.images, img, "image", problems)
    for cat in categories:
        if _check_category(cat, data.has_annotations, problems):
            _add_unique(data.categories, cat, "category", problems)
    data.anns_by_image = {img_id: [] for img_id in data.images}
    ann_ids: set[int] = set()
    for ann in annotations:
        if not _check_annotation(ann, problems):
            continue
        if ann["id"] in ann_ids:
            problems.append(f"duplicate annotation id {ann['id']}")
        ann_ids.add(ann["id"])
        if ann["image_id"] not in data.images:
            problems.append(f"annotation {ann['id']}: image_id {ann['image_id']} is not in 'images'")
            continue
        if ann["category_id"] not in data.categories:
            problems.append(f"annotation {ann['id']}: category_id {ann['category_id']} not in 'categories'")
        data.anns_by_image[ann["image_id"]].append(ann)
    problems.extend(_label_problems(data))
    return problems


def _add_unique(table: dict[int, dict], record: dict, what: str, problems: list[str]) -> None:
    if record["id"] in table:
        problems.append(f"duplicate {what} id {record['id']}")
    table[record["id"]] = record


def _missing(record: Any, keys: tuple[str, ...], what: str, problems: list[str]) -> bool:
    if not isinstance(record, dict):
        problems.append(f"{what} record is not an object: {str(record)[:40]}")
        return True
    absent = [k for k in keys if k not in record]
    if absent:
        problems.append(f"{what} {record.get('id', '?')}: missing key(s) {', '.join(absent)}")
    return bool(absent)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_image(img: Any, labelled: bool, problems: list[str]) -> bool:
    keys = IMAGE_KEYS + (LVIS_IMAGE_LABEL_KEYS if labelled else ())
    if _missing(img, keys, "image", problems):
        return False
    ok = _is_int(img["id"])
    if not ok:
        problems.append(f"image {img['id']!r}: id must be an integer")
    if not (_is_int(img["width"]) and _is_int(img["height"]) and img["width"] > 0 and img["height"] > 0):
        problems.append(f"image {img['id']}: width/height must be positive integers")
        ok = False
    if not img.get("coco_url") and not img.get("file_name"):
        problems.append(f"image {img['id']}: needs coco_url or file_name to locate the file")
    for key in LVIS_IMAGE_LABEL_KEYS:
        if key in img and not (isinstance(img[key], list) and all(_is_int(c) for c in img[key])):
            problems.append(f"image {img['id']}: {key} must be a list of category ids")
            img[key] = []
    return ok


def _check_category(cat: Any, labelled: bool, problems: list[str]) -> bool:
    keys = CATEGORY_KEYS + (("frequency",) if labelled else ())
    if _missing(cat, keys, "category", problems):
        return False
    if not _is_int(cat["id"]):
        problems.append(f"category {cat['id']!r}: id must be an integer")
        return False
    if "frequency" in cat and cat["frequency"] not in FREQUENCIES:
        problems.append(f"category {cat['id']}: frequency {cat['frequency']!r} is not one of r, c, f")
    return True


def _check_annotation(ann: Any, problems: list[str]) -> bool:
    if _missing(ann, ANNOTATION_KEYS, "annotation", problems):
        return False
    if not all(_is_int(ann[k]) for k in ("id", "image_id", "category_id")):
        problems.append(f"annotation {ann['id']}: id, image_id and category_id must be integers")
        return False
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        problems.append(f"annotation {ann['id']}: bbox must be 4 numbers [x, y, w, h]")
    elif not (all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0):
        problems.append(f"annotation {ann['id']}: degenerate bbox {box} (width and height must be > 0)")
    problem = _segmentation_problem(ann["segmentation"])
    if problem:
        problems.append(f"annotation {ann['id']}: {problem}")
    return True


def _segmentation_problem(seg: Any) -> str | None:
    if isinstance(seg, list):
        if not seg:
            return "empty segmentation"
        for poly in seg:
            if not isinstance(poly, np.ndarray) or poly.ndim != 1:
                return "segmentation is not a list of number lists"
            if poly.size < 6 or poly.size % 2:
                return f"degenerate polygon with {poly.size} coordinates (needs an even number >= 6)"
            if not np.isfinite(poly).all():
                return "polygon has a coordinate that is not a finite number"
        return None
    if isinstance(seg, dict) and "size" in seg and "counts" in seg:
        return None
    return "segmentation must be a polygon list or an RLE dict with size and counts"


def _label_problems(data: LvisData) -> list[str]:
    """Federated labels: neg/not-exhaustive ids must be known, and a negative may not be annotated."""
    problems: list[str] = []
    for img_id, img in data.images.items():
        listed = set(img.get("neg_category_ids", [])) | set(img.get("not_exhaustive_category_ids", []))
        unknown = sorted(c for c in listed if c not in data.categories)
        if unknown:
            problems.append(f"image {img_id}: neg/not-exhaustive category ids {unknown[:5]} unknown")
        anns = data.anns_by_image.get(img_id, [])
        both = sorted({a["category_id"] for a in anns} & set(img.get("neg_category_ids", [])))
        if both:
            problems.append(f"image {img_id}: categories {both[:5]} annotated but in neg_category_ids")
        for ann in anns:
            problems.extend(_annotation_on_image_problems(ann, img))
    return problems


def _annotation_on_image_problems(ann: dict, img: dict) -> list[str]:
    """Checks of an annotation against its image's size: RLE runs, a box entirely outside the image."""
    out: list[str] = []
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        problem = rle_problem(seg, img["height"], img["width"])
        if problem:
            out.append(f"annotation {ann['id']}: {problem}")
    elif isinstance(seg, list) and seg and _far_outside(seg, img["height"], img["width"]):
        out.append(
            f"annotation {ann['id']}: polygon coordinates lie far outside its {img['width']}x{img['height']} "
            f"image (up to {_largest(seg):g})"
        )
    box = ann["bbox"]
    if isinstance(box, list) and len(box) == 4 and all(_is_number(v) and math.isfinite(v) for v in box):
        x, y, w, h = box
        if w > 0 and h > 0 and (x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0):
            out.append(
                f"annotation {ann['id']}: bbox {box} lies entirely outside its "
                f"{img['width']}x{img['height']} image"
            )
    return out


def _far_outside(polygons: list, h: int, w: int) -> bool:
    """A coordinate more than an image side beyond the image (a 1e9, a swapped x/y of a huge image):
    slightly outside is common in real annotations and harmless, this is not. One reduction per
    annotation (1.3 M of them in LVIS train)."""
    return _largest(polygons) > 2 * max(h, w)


def _largest(polygons: list) -> float:
    coords = polygons[0] if len(polygons) == 1 else np.concatenate(polygons)
    return float(np.abs(coords).max())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def lvis_problems(data: LvisData, *, check_images: bool = False, decode: bool = False) -> list[str]:
    """Problems that need the file system: each image file must exist under ``image_root``, be a
    readable image (header and end marker; with ``decode`` the pixels) and have the json's size."""
    if not check_images:
        return []
    report = image_report(data, decode=decode)
    return report.problems(data)


@dataclass
class ImageReport:
    """The image files of an LVIS file, checked: which are missing, unreadable or of another size."""

    missing: dict[int, str] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)
    wrong_size: dict[int, str] = field(default_factory=dict)

    def problems(self, data: LvisData) -> list[str]:
        where = f"image root {data.image_root} ({data.image_root_source})"
        out = [f"image {i}: file {p} not found under {where}" for i, p in self.missing.items()]
        out += [f"image {i}: {m}" for i, m in self.unreadable.items()]
        out += [f"image {i}: {m}" for i, m in self.wrong_size.items()]
        return out


def image_report(data: LvisData, image_ids: Any = None, *, decode: bool = False) -> ImageReport:
    """Check the image files of ``image_ids`` (default all) with the one reader's header probe."""
    from lvisctl.data.image_io import ImageReadError, ImageSizeError, probe_image

    report = ImageReport()
    for img_id in sorted(data.images) if image_ids is None else image_ids:
        path = data.image_path(img_id)
        if not path.is_file():
            report.missing[img_id] = str(path)
            continue
        try:
            probe_image(path, expected_hw=data.image_hw(img_id), decode=decode)
        except ImageSizeError as err:
            report.wrong_size[img_id] = str(err)
        except ImageReadError as err:
            report.unreadable[img_id] = str(err)
    return report


def configured_path(data_cfg: Any, key: str) -> Path | None:
    """``data.<key>`` joined to ``data.root``; None when empty (then use the run's dataset artifact)."""
    value = str(data_cfg.get(key, "") or "")
    if not value:
        return None
    if is_builtin(value):  # detectron2's names: data.train=lvis_v1_train
        return builtin_json(value)
    path = Path(value).expanduser()
    root = str(data_cfg.get("root", "") or "")
    return path if path.is_absolute() or not root else Path(root).expanduser() / path
