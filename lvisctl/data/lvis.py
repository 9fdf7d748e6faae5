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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvisctl.data.builtin import builtin_json, image_root_of_names, is_builtin
from lvisctl.data.formats import image_relpaths, refuse_coco
from lvisctl.data.json_stream import JsonObjectStream
from lvisctl.data.lvis_checks import index_records
from lvisctl.data.lvis_records import (  # noqa: F401 - the public names of lvisctl.data.lvis
    FREQUENCIES,
    ImageRoot,
    LvisData,
    ann_to_mask,
    ann_to_rle,
    annotation_to_json,
    rle_problem,
    rle_string_counts,
    segmentation_to_json,
)
from lvisctl.errors import LvisctlError, raise_problems

MAX_LISTED_PROBLEMS = 5


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
        other = JsonObjectStream(fh, path).parse_object(handlers)
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
    problems.extend(index_records(data, images, categories, annotations))
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
