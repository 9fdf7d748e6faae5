"""The fixtures every test file may ask for (registered in ``tests/conftest.py``). The session-scoped
ones (``tiny_synth``, ``tiny_lvis``) are made once per ``pytest`` run: read them, never write into them
(copy what a test must change into its own ``tmp_path``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from lvisctl.rundir import RunDir
from tests.helpers.tiny_run import SIZES, add_checkpoint, make_lvis


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``lvisctl data synth --preset tiny --seed 0``: the paths ``generate_synthetic_lvis`` returns."""
    from lvisctl.data.synth import generate_synthetic_lvis

    return generate_synthetic_lvis(tmp_path_factory.mktemp("tiny_synth") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_lvis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three PNG images and their annotated LVIS json (``helpers.tiny_run.make_lvis``)."""
    from tests.helpers.tiny_run import make_lvis

    return make_lvis(tmp_path_factory.mktemp("tiny_lvis"))


@pytest.fixture
def setup(tmp_path: Path) -> tuple:
    """``(run, val json, stage-2 final checkpoint)``: a run with tiny stage-1 and stage-2 final checkpoints
    (and a newer non-final one) and the 3-image LVIS json of ``helpers.tiny_run.make_lvis``."""
    from lvisctl.rundir import RunDir
    from tests.helpers.tiny_run import add_checkpoint, make_lvis

    data = tmp_path / "data"
    data.mkdir()
    images = make_lvis(data)
    run = RunDir(tmp_path / "run")
    add_checkpoint(run, stage=1, final=True, seed=1)
    stage2 = add_checkpoint(run, stage=2, final=True, seed=2)
    add_checkpoint(run, stage=2, final=False, seed=3)
    return run, images, stage2


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "run")
    add_checkpoint(run, stage=1, final=True, seed=1)
    add_checkpoint(run, stage=2, final=True, seed=2)  # newer, but pseudo labels feed stage 1
    return run


def _rle(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> dict:
    mask = np.zeros((h, w), np.uint8, order="F")
    mask[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(mask)
    return {"size": [h, w], "counts": rle["counts"].decode()}


@pytest.fixture
def inputs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    gt = make_lvis(data)  # img1..3, one GT square [10:30, 10:30] each, categories 3, 9, 40
    h, w = SIZES[0]
    preds = [
        {
            "image_id": 1,
            "category_id": 9,
            "bbox": [30, 34, 40, 26],
            "score": 0.9,
            "segmentation": _rle(h, w, 34, 60, 30, 70),
        },
        {
            "image_id": 1,
            "category_id": 3,
            "bbox": [0, 0, 5, 5],
            "score": 0.1,
            "segmentation": _rle(h, w, 0, 5, 0, 5),
        },
    ]
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(preds))
    return gt, path, data
