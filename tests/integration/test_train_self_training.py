"""Self-training (paper 2.1) end to end on tiny synthetic LVIS: ``lvisctl train`` with a missing-annotation
file and an unlabeled-images file (both hand-made here), their lineage, and exact resume with extra images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils

from lvisctl.data.dataset import ConcatTrainDataset
from lvisctl.data.samplers import ExtraImagesSampler
from lvisctl.data.synth import generate_synthetic_lvis
from lvisctl.engine.distributed import DistInfo
from lvisctl.engine.trainer import build_train_data
from lvisctl.rundir import RunDir, atomic_write_json, sha256_file
from lvisctl.training import train
from tests.helpers.engine_standins import DEMO_CONFIG, real_tiny_config, register_train_json, tiny_items

REPO = Path(__file__).resolve().parents[2]
TRAIN_IMAGES = 6  # a small LVIS part, so an epoch (6 LVIS + 3 extra images) is 4 iterations of 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Synthetic LVIS cut to 6 training images, a missing-annotation file and an unlabeled-mode file."""
    root = tmp_path_factory.mktemp("st")
    data = generate_synthetic_lvis(root / "tiny", preset="tiny", seed=0)
    train = json.loads(data["train"].read_text())
    keep = {img["id"] for img in train["images"][:TRAIN_IMAGES]}
    train["images"] = [img for img in train["images"] if img["id"] in keep]
    train["annotations"] = [a for a in train["annotations"] if a["image_id"] in keep]
    small_train = data["root"] / "lvis_v1_train_small.json"  # next to train2017/, so images resolve
    small_train.write_text(json.dumps(train))

    # missing mode: boxes only (xywh), two LVIS images, plus one image that is not in the training set
    first, second = sorted(keep)[:2]
    missing = {
        "info": {"pseudo_label_source": "missing"},
        "images": [{"id": i, "width": 64, "height": 64} for i in (first, second)],
        "annotations": [
            {"id": 1, "image_id": first, "category_id": 1, "bbox": [2.0, 2.0, 12.0, 10.0], "score": 0.9},
            {"id": 2, "image_id": second, "category_id": 2, "bbox": [40.0, 30.0, 20.0, 20.0], "score": 0.8},
            {"id": 3, "image_id": 999_999, "category_id": 2, "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.8},
        ],
        "categories": train["categories"],
    }
    missing_path = root / "pseudo_missing.json"
    missing_path.write_text(json.dumps(missing))

    # unlabeled mode: the synthetic unlabeled images, each with an RLE rectangle of category 1 and one of
    # an unknown category (dropped: not an LVIS training category)
    info = json.loads(data["unlabeled"].read_text())
    anns = []
    for k, img in enumerate(info["images"]):
        for cat, (x1, y1, x2, y2) in ((1, (8 + k, 10, 30 + k, 40)), (4242, (40, 40, 60, 60))):
            mask = np.zeros((img["height"], img["width"]), dtype=np.uint8, order="F")
            mask[y1:y2, x1:x2] = 1
            rle = mask_utils.encode(mask)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": cat,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": 0.9,
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
                }
            )
    unlabeled = {
        "info": {"pseudo_label_source": "unlabeled"},
        "images": info["images"],
        "annotations": anns,
        "categories": train["categories"],
    }
    return {
        "train": small_train,
        "missing": missing_path,
        "unlabeled": unlabeled,
        "unlabeled_info": data["unlabeled"],
        "num_extra": len(info["images"]),
        "ignored_images": [first, second],
    }


def _run_dir(path: Path, files: dict) -> Path:
    """A run dir with the training json and the unlabeled pseudo labels registered as `pseudolabel` would."""
    register_train_json(path, files["train"])
    run = RunDir(path)
    out = atomic_write_json(run.output_path("pseudo_labels/unlabeled_unlabeled.json"), files["unlabeled"])
    run.register("pseudo-labels", out, meta={"mode": "unlabeled", "images": str(files["unlabeled_info"])})
    return path


ST_ITEMS = {
    "data.extra_images": "latest",
    "data.extra_per_epoch": 3,
    "data.extra_loss_weight": 0.5,
    "sampler.type": "uniform",  # every LVIS image once per epoch: hand-checkable epoch lengths
}


def _items(files: dict, **overrides) -> dict:
    return {**ST_ITEMS, "data.pseudo_labels": str(files["missing"]), **overrides}


def test_train_with_pseudo_labels_records_both_files(tmp_path, files):
    run_dir = _run_dir(tmp_path / "run", files)
    items = tiny_items(**_items(files, **{"solver.max_iter": 3, "train.checkpoint_period": 2}))
    proc = subprocess.run(
        [sys.executable, "-m", "lvisctl", "train", "--config", DEMO_CONFIG, "--run-dir", run_dir, *items],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = RunDir(run_dir)
    final = run.latest("checkpoint", stage=1, final=True)
    inputs = {i["path"]: i for i in final.inputs}
    assert inputs["pseudo_labels/unlabeled_unlabeled.json"]["kind"] == "pseudo-labels"
    missing = str(files["missing"].resolve())
    assert inputs[missing]["kind"] == "external" and inputs[missing]["sha256"] == sha256_file(
        files["missing"]
    )
    assert inputs[str(files["train"])]["kind"] == "dataset"
    config = run.latest("config", stage=1)
    assert {i["path"] for i in config.inputs} >= {missing, "pseudo_labels/unlabeled_unlabeled.json"}
    state = torch.load(run.resolve(final), weights_only=True)
    n = files["num_extra"]
    extra_file = str((run.root / "pseudo_labels" / "unlabeled_unlabeled.json").resolve())
    # the run records the file `latest` resolved to, in its checkpoints and its config file
    assert state["config"]["data"]["extra_images"] == extra_file and state["iteration"] == 3
    assert yaml.safe_load(run.resolve(config).read_text())["data"]["extra_images"] == extra_file
    assert (
        f"self-training: data.pseudo_labels = {missing}: 2 ignore boxes on 2 training images" in proc.stdout
    )
    assert (
        f"self-training: data.extra_images = {extra_file}: {n} extra images with {2 * n} pseudo labels"
        in (proc.stdout)
    )

    # what that run trained on: 6 LVIS images + 3 of the extra images per epoch, ignore boxes, lambda
    data = build_train_data(real_tiny_config(**_items(files)), run, DistInfo())
    assert isinstance(data.dataset, ConcatTrainDataset) and isinstance(data.sampler, ExtraImagesSampler)
    assert data.sampler.num_base == TRAIN_IMAGES and data.sampler.num_extra == files["num_extra"]
    data.sampler.set_epoch(0)
    keys = list(data.sampler)
    assert len(keys) == TRAIN_IMAGES + 3
    lvis_part = data.dataset.parts[0]
    first, second = files["ignored_images"]
    assert lvis_part.ignore_boxes == {first: [[2.0, 2.0, 14.0, 12.0]], second: [[40.0, 30.0, 60.0, 50.0]]}
    weights = sorted(data.dataset[key][1]["loss_weight"] for key in keys)
    assert weights == [0.5] * 3 + [1.0] * TRAIN_IMAGES
    extra = data.dataset.parts[1].load(0)
    assert extra["labels"].tolist() == [1] and extra["masks"].shape == (1, 64, 64)  # cat 4242 dropped
    assert extra["boxes"].tolist() == [[8.0, 10.0, 30.0, 40.0]] and int(extra["masks"].sum()) == 22 * 30


def _crash_at(call: int):
    """The real model, raising on forward call ``call`` (a crash mid-run, after a checkpoint)."""
    from lvisctl.modeling.build import build_model

    def build(cfg, stats):
        model = build_model(cfg, stats)
        forward, calls = model.forward, [0]

        def crashing(*args, **kwargs):
            calls[0] += 1
            if calls[0] == call:
                raise RuntimeError("simulated crash")
            return forward(*args, **kwargs)

        model.forward = crashing
        return model

    return build


def test_resume_with_extra_images_is_exact(tmp_path, files):
    # 4 iterations per epoch; checkpoint at 3, crash at 5 (epoch 1): resume redoes iterations 4-6
    # across the epoch boundary, where a new set of extra images is drawn.
    cfg = real_tiny_config(**_items(files, **{"solver.max_iter": 6, "train.checkpoint_period": 3}))
    ref = train(cfg, _run_dir(tmp_path / "ref", files))
    crashed = _run_dir(tmp_path / "crashed", files)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, crashed, build_model=_crash_at(5))
    assert [a.meta["iteration"] for a in RunDir(crashed).artifacts("checkpoint")] == [3]
    resumed = train(None, crashed, resume=True)
    assert resumed.iteration == ref.iteration == 6
    a = torch.load(ref.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["history"] == b["history"]


def test_train_refuses_pseudo_labels_made_on_another_annotation_file(tmp_path, files):
    """Issue 22 item 11: labels made on another dataset, sharing image ids, were put on these images."""
    from lvisctl.errors import LvisctlError

    run_dir = _run_dir(tmp_path / "run", files)
    other = tmp_path / "other_train.json"
    other.write_text('{"images": [], "annotations": [], "categories": []}')
    labels = json.loads(files["missing"].read_text())
    labels["info"].update(source_annotations=str(other), source_annotations_sha256=sha256_file(other))
    foreign = tmp_path / "foreign_missing.json"
    foreign.write_text(json.dumps(labels))
    cfg = real_tiny_config(**_items(files, **{"data.pseudo_labels": str(foreign)}))
    with pytest.raises(LvisctlError, match=r"made on .*other_train.json .* but data.train is"):
        build_train_data(cfg, RunDir(run_dir), DistInfo())
    labels["info"]["source_annotations_sha256"] = sha256_file(files["train"])  # made on this very file
    foreign.write_text(json.dumps(labels))
    data = build_train_data(
        real_tiny_config(**_items(files, **{"data.pseudo_labels": str(foreign)})), RunDir(run_dir), DistInfo()
    )
    assert data.dataset.parts[0].ignore_boxes
