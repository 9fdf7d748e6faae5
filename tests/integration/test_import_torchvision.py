"""The import contract: a torchvision Mask R-CNN imported with ``import-checkpoint`` and run by ``tta-infer``
gives torchvision's own boxes, labels and scores (eval mode, same scale, no download)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from lvisctl.cli.app import app
from lvisctl.engine.checkpoint import load_checkpoint
from lvisctl.rundir import RunDir

SCALE = 160
SIZES = [(160, 208), (224, 160), (160, 160)]  # (h, w): short side = SCALE, so neither side resizes


def _torchvision_model(v2: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    ctor = (
        torchvision.models.detection.maskrcnn_resnet50_fpn_v2
        if v2
        else torchvision.models.detection.maskrcnn_resnet50_fpn
    )
    model = ctor(
        weights=None,
        weights_backbone=None,
        min_size=SCALE,
        max_size=1333,
        box_score_thresh=1e-4,  # lvisctl's LVIS test settings (model.test.*)
        box_detections_per_img=300,
    )
    with torch.no_grad():  # spread the random classifier so ranks are not decided by float noise
        model.roi_heads.box_predictor.cls_score.weight.mul_(40)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(20)
    return model.eval()


def _coco_lvis_json(folder: Path) -> Path:
    """Images with short side SCALE and an LVIS file whose 90 categories are torchvision's COCO ids 1..90."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (h, w) in enumerate(SIZES, start=1):
        pixels = rng.random((h, w, 3))
        pixels[h // 4 : h // 2, w // 4 : w // 2] = [0.9, 0.2, 0.1]  # some structure for the RPN
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"img{i}.png")
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
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [10, 10, 20, 20],
                "area": 400,
                "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
                "iscrowd": 0,
            }
        )
    cats = [
        {
            "id": c,
            "name": f"coco{c}",
            "frequency": "f",
            "image_count": 1,
            "instance_count": 1,
            "synset": f"coco{c}.n.01",
            "synonyms": [f"coco{c}"],
            "def": "",
        }
        for c in range(1, 91)
    ]
    path = folder / "coco90.json"
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    return path


def _reference(model: torch.nn.Module, folder: Path) -> list[dict[str, torch.Tensor]]:
    outs = []
    with torch.no_grad():
        for i in range(1, len(SIZES) + 1):
            img = (
                torch.from_numpy(np.array(Image.open(folder / f"img{i}.png"))).permute(2, 0, 1).float() / 255
            )
            outs.append(model([img])[0])
    return outs


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tv")
    model = _torchvision_model()
    weights = tmp / "maskrcnn_resnet50_fpn.pth"
    torch.save(model.state_dict(), weights)
    data = _coco_lvis_json(tmp)
    run = tmp / "run"
    result = CliRunner().invoke(
        app, ["import-checkpoint", str(weights), "--run-dir", str(run), f"data.train={data}"]
    )
    assert result.exit_code == 0, result.output
    return model, tmp, data, run, result.output


def test_import_report_and_manifest(imported):
    _, _, data, run, output = imported
    assert "classifier kept" in output
    rd = RunDir(run)
    ckpt_art = rd.latest("checkpoint", final=True)
    assert ckpt_art.path == "checkpoints/stage1_final.pt" and ckpt_art.meta["stage"] == 1
    assert ckpt_art.inputs[0]["kind"] == "external" and len(ckpt_art.inputs[0]["sha256"]) == 64
    report = json.loads((run / "checkpoints/stage1_final.import.json").read_text())
    assert report["framework"] == "torchvision" and report["classifier"] == "kept"
    # the trunk's 53 BatchNorm layers carry num_batches_tracked (FrozenBN has none): the only unused tensors
    assert report["groups"]["trunk"]["unused"] == 53
    assert sum(g["unused"] for g in report["groups"].values()) == 53
    assert all(k.endswith("num_batches_tracked") for k in report["unused_examples"])
    assert report["groups"]["trunk"]["loaded"] == 265 and report["groups"]["mask head"]["loaded"] == 12
    assert all(g["re-initialised"] == 0 for g in report["groups"].values())
    ckpt = load_checkpoint(run / "checkpoints/stage1_final.pt")
    assert ckpt["config"]["model"]["rpn"]["anchor_round"] is True
    # the run remembers the data it was given, for its later commands (issue 26 item 1)
    assert rd.datasets()["train"] == str(Path(data).resolve()) and "remembers data.train=" in output


def test_tta_infer_equals_torchvision(imported):
    model, tmp, data, run, _ = imported
    out = tmp / "preds.json"
    result = CliRunner().invoke(
        app,
        [
            "tta-infer",
            "--run-dir",
            str(run),
            "--images",
            str(data),
            "--scales",
            str(SCALE),
            "--out",
            str(out),
            "inference.num_workers=0",
        ],
    )
    assert result.exit_code == 0, result.output
    preds = json.loads(out.with_suffix(".bbox.json").read_text())
    reference = _reference(model, tmp)
    for image_id, ref in enumerate(reference, start=1):
        mine = sorted((p for p in preds if p["image_id"] == image_id), key=lambda p: -p["score"])
        ref_boxes = ref["boxes"].clone()
        ref_boxes[:, 2:] -= ref_boxes[:, :2]  # xyxy -> xywh as in the results file
        # lvisctl never writes an empty mask (issue 20), so its records are torchvision's detections in
        # order, less those whose mask pastes empty (lvisctl pastes at the original size, torchvision at
        # the input's: a mask of a few pixels can differ); everything else is torchvision's exactly
        # Past torchvision's last detection come the spare candidates that took the slots of the empty
        # masks under the cap: at most as many as were skipped, and never more than the cap.
        j, n, matched = 0, len(ref["scores"]), 0
        for p in mine:
            while j < n and not _same_detection(p, ref, ref_boxes, j):
                j += 1
            if j == n:
                break
            matched, j = matched + 1, j + 1
        assert len(mine) <= n, f"image {image_id}: spares beyond the empty masks they replace"
        assert all(p["score"] <= float(ref["scores"][-1]) + 1e-6 for p in mine[matched:]), f"image {image_id}"
        assert matched > 20


def _same_detection(p: dict, ref: dict, ref_boxes: torch.Tensor, j: int) -> bool:
    return (
        p["category_id"] == int(ref["labels"][j])
        and abs(p["score"] - float(ref["scores"][j])) <= 1e-5 + 1e-4 * abs(float(ref["scores"][j]))
        and bool((torch.tensor(p["bbox"]) - ref_boxes[j]).abs().max() <= 0.02)
    )


def test_v2_imports_with_folded_batchnorm_and_conv_box_head(tmp_path):
    """``maskrcnn_resnet50_fpn_v2``: BatchNorm of FPN / box-head / mask-head convs folded, 4conv1fc box head;
    the model gives torchvision's detections (boxes to rounding amplified by the exp of large deltas)."""
    from lvisctl.checkpoint_import import import_checkpoint
    from lvisctl.inference.factory import load_checkpoint_model

    tv = _torchvision_model(v2=True)
    with torch.no_grad():  # non-trivial statistics, so folding is really exercised
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    torch.save(tv.state_dict(), tmp_path / "v2.pth")
    data = _coco_lvis_json(tmp_path)
    result = import_checkpoint(tmp_path / "v2.pth", tmp_path / "run", overrides=[f"data.train={data}"])
    assert result.report.classifier == "kept" and result.report.overrides["model.roi_heads.box_convs"] == 4
    model, _, _ = load_checkpoint_model(tmp_path / "run" / "checkpoints" / "stage1_final.pt")
    ref, mine = _reference(tv, tmp_path)[0], _reference(model, tmp_path)[0]
    assert len(mine["scores"]) == len(ref["scores"]) > 0
    torch.testing.assert_close(mine["scores"], ref["scores"], atol=1e-5, rtol=1e-4)
    assert torch.equal(mine["labels"], ref["labels"])
    torch.testing.assert_close(mine["boxes"], ref["boxes"], atol=0.25, rtol=0)
