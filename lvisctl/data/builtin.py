"""Builtin dataset names, as detectron2 registers them (``detectron2/data/datasets/builtin.py``).

``data.train=lvis_v1_train`` means ``$LVISCTL_DATASETS/lvis/lvis_v1_train.json`` with the images under
``$LVISCTL_DATASETS/coco/`` (``LVISCTL_DATASETS`` defaults to ``./datasets``, as detectron2's
``DETECTRON2_DATASETS``). The names and relative paths are detectron2's, so one ``datasets/`` folder serves
both tools.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV = "LVISCTL_DATASETS"

# name -> (image root, annotation json), relative to the datasets root; copied from detectron2's
# _PREDEFINED_SPLITS_LVIS and _PREDEFINED_SPLITS_COCO["coco"].
BUILTIN: dict[str, tuple[str, str]] = {
    "lvis_v1_train": ("coco/", "lvis/lvis_v1_train.json"),
    "lvis_v1_val": ("coco/", "lvis/lvis_v1_val.json"),
    "lvis_v1_test_dev": ("coco/", "lvis/lvis_v1_image_info_test_dev.json"),
    "lvis_v1_test_challenge": ("coco/", "lvis/lvis_v1_image_info_test_challenge.json"),
    "lvis_v0.5_train": ("coco/", "lvis/lvis_v0.5_train.json"),
    "lvis_v0.5_val": ("coco/", "lvis/lvis_v0.5_val.json"),
    "lvis_v0.5_val_rand_100": ("coco/", "lvis/lvis_v0.5_val_rand_100.json"),
    "lvis_v0.5_test": ("coco/", "lvis/lvis_v0.5_image_info_test.json"),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}


def datasets_root() -> Path:
    """``$LVISCTL_DATASETS``, else ``./datasets``."""
    return Path(os.environ.get(ENV) or "datasets").expanduser()


def is_builtin(value: object) -> bool:
    """True for a builtin name that is not also an existing file or folder (a file always wins)."""
    text = str(value or "")
    return text in BUILTIN and not Path(text).exists()


def builtin_json(name: str) -> Path:
    """The annotation / image-info json of a builtin name."""
    return datasets_root() / BUILTIN[name][1]


def builtin_image_root(name: str) -> Path:
    """The image root of a builtin name (``datasets/coco`` for LVIS: paths carry ``train2017/``...)."""
    return datasets_root() / BUILTIN[name][0]


def image_root_of_names(data_cfg: Any) -> tuple[Path, str] | None:
    """(image root, the setting that says so) of the first builtin name in ``data.train`` / ``val`` /
    ``test_info``; None when none is a builtin name."""
    for key in ("train", "val", "test_info"):
        name = str(data_cfg.get(key, "") or "")
        if is_builtin(name):
            return builtin_image_root(name), f"data.{key}={name}"
    return None
