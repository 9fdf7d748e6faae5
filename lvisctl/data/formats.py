"""Which annotation format a json is, and where its image files are.

* Image files: the last two parts of ``coco_url`` (``val2017/000000001268.jpg``; detectron2's
  ``get_file_name`` in ``detectron2/data/datasets/lvis.py``), then ``file_name`` with mmdet's LVIS v0.5
  rule (``mmdet/datasets/lvis.py``: a ``COCO_[train|val|test]2014_`` name becomes its 2017 name
  ``000000001268.jpg``), then that name in each of detectron2's ``{val,train,test}2017/`` folders. Under
  an image root the first candidate that exists wins, so one json serves the COCO folder layout
  (``ROOT/val2017/...``) and a flat folder of 2017 names.
* A COCO instances file (categories without ``frequency``, images without LVIS's federated lists) is
  refused in one line that offers ``lvisctl data convert --from coco``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError

COCO_2014_NAME = re.compile(r"^COCO_[a-z]+2014_(.+)$")
COCO_2017_SPLITS = ("val", "train", "test")
FEDERATED_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


def image_relpaths(image: Mapping[str, Any]) -> list[str]:
    """Where an image record's file may be, relative to the image root, most likely first."""
    out: list[str] = []
    if image.get("coco_url"):
        out.append("/".join(str(image["coco_url"]).split("/")[-2:]))
    name = str(image.get("file_name") or "")
    if name:
        match = COCO_2014_NAME.match(Path(name).name)
        out.append(match.group(1) if match else name)
        if match:
            # a 2014 name under detectron2's 2017 folders (``datasets/coco/val2017/``): COCO 2017 re-split the
            # 2014 images, so a val2014 image may be in train2017; a coco_url of a 2014 folder misses them
            out += [f"{split}2017/{match.group(1)}" for split in COCO_2017_SPLITS]
    return list(dict.fromkeys(out)) or [""]


def find_image(root: Path, image: Mapping[str, Any]) -> Path:
    """The first candidate of :func:`image_relpaths` that exists under ``root`` (else the first one, so
    the "not found" message names the path the rule prefers)."""
    candidates = [root / rel for rel in image_relpaths(image)]
    if len(candidates) > 1:
        for path in candidates:
            if path.is_file():
                return path
    return candidates[0]


def is_coco_instances(categories: list[Any], images: list[Any]) -> bool:
    """A COCO-format file: no category carries LVIS's ``frequency`` and no image its federated lists."""
    if not categories or not all(isinstance(c, dict) for c in categories):
        return False
    if any("frequency" in c for c in categories):
        return False
    return not any(isinstance(i, dict) and any(k in i for k in FEDERATED_KEYS) for i in images)


def refuse_coco(path: Path, categories: list[Any], images: list[Any]) -> None:
    """One line instead of a problem per record when ``path`` is a COCO file."""
    if is_coco_instances(categories, images):
        raise LvisctlError(
            f"{path}: this is a COCO file (no LVIS frequencies or neg/not-exhaustive lists); convert it "
            f"with `lvisctl data convert --from coco {path} OUT.json`"
        )
