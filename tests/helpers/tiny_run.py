"""A tiny LVIS file (three images) and tiny untrained checkpoints registered in a run directory: the inputs
of the CLI tests that need a real model but no training."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image

from lvisctl.config import load_config
from lvisctl.data.categories import CategoryStats
from lvisctl.engine.checkpoint import save_checkpoint
from lvisctl.modeling.build import build_model
from lvisctl.rundir import RunDir

TINY = [
    "model.backbone.name=tiny",
    "model.backbone.tiny_width=8",
    "model.backbone.norm=bn",
    "model.fpn.out_channels=16",
    "model.roi_heads.fc_dim=32",
    "model.mask_head.conv_dim=16",
    "model.mask_head.num_convs=1",
    "model.rpn.anchor_sizes=[8,16,32,64,128]",
    "inference.scales=[48]",
    "inference.num_workers=0",
]
CAT_IDS = [3, 9, 40]
SIZES = [(64, 80), (48, 48), (72, 56)]  # (h, w)


def make_lvis(folder: Path) -> Path:
    """Three PNG images and an annotated LVIS json (one square object each, RLE masks)."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (h, w) in enumerate(SIZES, start=1):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
        images.append(
            {
                "id": i,
                "width": w,
                "height": h,
                "file_name": f"img{i}.png",
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        )
        mask = np.zeros((h, w), np.uint8, order="F")
        mask[10:30, 10:30] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode()
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": CAT_IDS[i - 1],
                "bbox": [10, 10, 20, 20],
                "area": 400,
                "segmentation": rle,
                "iscrowd": 0,
            }
        )
    cats = [
        {
            "id": c,
            "name": f"c{c}",
            "frequency": "f",
            "image_count": 1,
            "instance_count": 1,
            "synset": f"c{c}.n.01",
            "synonyms": [f"c{c}"],
            "def": "",
        }
        for c in CAT_IDS
    ]
    path = folder / "val.json"
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    return path


@functools.cache
def tiny_model_state(seed: int) -> tuple[dict, dict, dict, torch.Tensor]:
    """``(model state dict, config dict, category stats dict, torch RNG state after building)`` of the
    tiny untrained model built with ``seed``: built once per seed and session (the tensors are only read:
    saved, loaded, compared)."""
    cfg = load_config(None, TINY)
    stats = CategoryStats.from_dict(
        {
            "cat_ids": CAT_IDS,
            "names": [f"c{c}" for c in CAT_IDS],
            "image_count": [1, 1, 1],
            "instance_count": [1, 1, 1],
            "frequency": ["f", "f", "f"],
            "num_images": 3,
        }
    )
    torch.manual_seed(seed)
    model = build_model(cfg, stats)
    return model.state_dict(), cfg.to_dict(), stats.to_dict(), torch.get_rng_state()


def add_checkpoint(run: RunDir, stage: int, final: bool, seed: int) -> Path:
    """A tiny checkpoint of ``stage`` saved and registered in ``run`` (as training would)."""
    model, config, stats, rng = tiny_model_state(seed)
    torch.set_rng_state(rng)  # as if the model had been built here: later random draws stay the same
    state = {
        "model": dict(model),
        "config": copy.deepcopy(config),
        "category_stats": copy.deepcopy(stats),
        "stage": stage,
        "iteration": 10 * stage + final,
        "epoch": 1,
        "final": final,
    }
    return run.path_of(save_checkpoint(run, state).path)


def make_tiny_run(tmp_path: Path) -> tuple[RunDir, Path]:
    """A run directory with a tiny stage-2 checkpoint and a 3-image LVIS val json next to its images."""
    data = tmp_path / "data"
    data.mkdir()
    images = make_lvis(data)
    run = RunDir(tmp_path / "run")
    add_checkpoint(run, stage=2, final=True, seed=2)
    return run, images
