"""``lvisctl pseudolabel SOURCE`` end to end with the real (tiny, untrained) model: image folders, Open
Images image lists, LVIS's missing annotations; the outputs validate and load in lvis-api."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lvisctl.cli.app import app
from lvisctl.data.lvis import load_lvis
from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from tests.helpers.cli import invoke as cli_invoke
from tests.helpers.images import _noise


def make_folder(root: Path) -> Path:
    """Nested sub-folders; a JPEG, a PNG, a grayscale JPEG, a corrupt JPEG, a truncated JPEG, a text file."""
    (root / "a" / "b").mkdir(parents=True)
    Image.fromarray(_noise(40, 56)).save(root / "a" / "b" / "0001.jpg", quality=90)
    Image.fromarray(_noise(48, 32)).save(root / "a" / "0002.png")
    Image.fromarray(_noise(36, 44, 1), mode="L").save(root / "0003.jpg")
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = (root / "a" / "b" / "0001.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(good[: len(good) // 2])  # an interrupted download
    (root / "notes.txt").write_text("not an image")
    return root


def invoke(*args):
    return cli_invoke("pseudolabel", *args)


def test_openimages_folder_skips_unreadable_and_validates(run, tmp_path):
    folder = make_folder(tmp_path / "oi")
    result = invoke("openimages", "--run-dir", run.root, "--image-root", folder, "--score-thresh", "0")
    assert result.exit_code == 0, result.output
    assert "checkpoint: checkpoints/stage1_final.pt (stage 1, iteration 11, final; newest stage-1 final)" in (
        result.output
    )
    assert "skipped 2 unreadable or missing image(s):" in result.output
    assert "a/corrupt.jpg: " in result.output and "cut.jpg: " in result.output
    art = run.latest("pseudo-labels")
    assert art.meta["mode"] == "unlabeled" and art.meta["source"] == "openimages"
    assert art.meta["num_images"] == 3 and art.meta["skipped_images"] == 2
    path = run.resolve(art)
    data = load_lvis(path, image_root=folder, check_images=True)  # what `lvisctl data validate` runs
    names = sorted(img["file_name"] for img in data.images.values())
    assert names == ["0003.jpg", "a/0002.png", "a/b/0001.jpg"]
    sizes = {img["file_name"]: (img["width"], img["height"]) for img in data.images.values()}
    assert sizes == {"0003.jpg": (44, 36), "a/0002.png": (32, 48), "a/b/0001.jpg": (56, 40)}
    assert data.num_annotations > 0 and {c["id"] for c in data.categories.values()} == {3, 9, 40}
    check = CliRunner().invoke(app, ["data", "validate", str(path), "--image-root", str(folder)])
    assert check.exit_code == 0, check.output

    from tests.helpers.lvis_reference import LVIS

    assert len(LVIS(str(path)).get_ann_ids()) == data.num_annotations
    # the predictions made on the way are not predictions for evaluation
    preds = run.artifacts("predictions")
    assert preds and all(p.meta["purpose"] == "pseudolabel" for p in preds)
    # stable ids: a second run over the same folder gives the same ids
    again = invoke(
        "images", "--run-dir", run.root, "--images", folder, "--score-thresh", "0", "--out", "x.json"
    )
    assert again.exit_code == 0, again.output
    ids = {i["id"] for i in json.loads((run.root / "x.json").read_text())["images"]}
    assert ids == set(data.images)


def test_open_images_csv_with_a_missing_file(run, tmp_path):
    folder = make_folder(tmp_path / "oi")
    Image.fromarray(_noise(30, 30)).save(folder / "00ab12.jpg")
    csv = tmp_path / "train-images-boxable.csv"
    csv.write_text("ImageID,Subset,OriginalURL\n00ab12,train,http://x\nffff99,train,http://y\n")
    args = ["openimages", "--run-dir", run.root, "--image-root", folder, "--image-list", csv]
    result = invoke(*args)
    assert "skipped 1 unreadable or missing image(s):" in result.output
    assert "ffff99.jpg: " in result.output and "not found" in result.output
    # an untrained model: nothing reaches 0.5, so the command shows the score distribution and, with 0
    # labels kept, writes no file (issue 26 item 6)
    assert "predicted scores:" in result.output and "p90" in result.output
    assert isinstance(result.exception, LvisctlError) and "0 pseudo labels kept" in str(result.exception)
    assert run.find("pseudo-labels") == []
    result = invoke(*args, "--score-thresh", "0")
    assert result.exit_code == 0, result.output
    assert run.latest("pseudo-labels").meta["num_images"] == 1


def test_no_readable_image_is_an_error(run, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"nope")
    result = invoke("images", "--run-dir", run.root, "--images", folder)
    assert result.exit_code != 0 and isinstance(result.exception, LvisctlError)
    assert "no readable image (1 skipped: x.jpg:" in str(result.exception)
    assert not (run.root / "pseudo_labels").exists()


def test_mode_alias_and_bad_thresholds(run, tmp_path):
    bad = invoke(
        "--run-dir", run.root, "--mode", "unlabeled", "--image-root", tmp_path, "--score-thresh", "r=2"
    )
    assert isinstance(bad.exception, LvisctlError) and "--score-thresh 'r=2'" in str(bad.exception)
    wrong = invoke("coco", "--run-dir", run.root)
    assert isinstance(wrong.exception, LvisctlError) and "SOURCE must be one of lvis, openimages" in str(
        wrong.exception
    )


# ------------------------------------------------------------------------------------ pseudolabel lvis
HIDE_EVERY = 3  # every 3rd annotation of a category with >= 2 instances on an image is hidden


@pytest.fixture(scope="module")
def hidden_lvis(tmp_path_factory):
    """Tiny synthetic LVIS with known unannotated instances: annotations removed from the json, their
    category marked not exhaustively annotated on that image (as LVIS does)."""
    from lvisctl.data.synth import generate_synthetic_lvis

    root = tmp_path_factory.mktemp("lvis")
    data = generate_synthetic_lvis(root / "tiny", preset="tiny", seed=0)
    train = json.loads(data["train"].read_text())
    per_image_cat: dict[tuple[int, int], list[dict]] = {}
    for ann in train["annotations"]:
        per_image_cat.setdefault((ann["image_id"], ann["category_id"]), []).append(ann)
    hidden = [anns[-1] for anns in per_image_cat.values() if len(anns) >= 2]
    hidden = hidden[::HIDE_EVERY] or hidden
    hidden_ids = {a["id"] for a in hidden}
    images = {img["id"]: img for img in train["images"]}
    for ann in hidden:
        img = images[ann["image_id"]]
        img["not_exhaustive_category_ids"] = sorted({*img["not_exhaustive_category_ids"], ann["category_id"]})
    train["annotations"] = [a for a in train["annotations"] if a["id"] not in hidden_ids]
    path = data["root"] / "lvis_v1_train_hidden.json"  # next to train2017/, so images resolve
    path.write_text(json.dumps(train))
    return {"train": path, "hidden": hidden, "full": json.loads(data["train"].read_text())}


def _lvis_checkpoint(run: RunDir, train_json: Path) -> None:
    """A tiny untrained model over the synthetic categories, whose lineage names its training json."""
    import torch

    from lvisctl.config import load_config
    from lvisctl.engine.checkpoint import save_checkpoint
    from lvisctl.modeling.build import build_model
    from tests.helpers.tiny_run import TINY

    cfg = load_config(None, TINY)
    stats = load_lvis(train_json).category_stats()
    torch.manual_seed(0)
    dataset = run.register("dataset", train_json, meta={"split": "train"})
    state = {
        "model": build_model(cfg, stats).state_dict(),
        "config": cfg.to_dict(),
        "category_stats": stats.to_dict(),
        "stage": 1,
        "iteration": 5,
        "epoch": 1,
        "final": True,
    }
    save_checkpoint(run, state, inputs=[dataset])


def _oracle_run_chunk(lvis_json: dict, hidden: list[dict]):
    """A stand-in for the model: detects every annotated and hidden instance (score 0.95 / 0.9), plus on
    each image with a hidden instance a confident detection of a category verified absent there (which
    cannot be a missing annotation), and a low-score copy of each hidden instance."""
    from lvisctl.data.lvis import ann_to_rle

    images = {img["id"]: img for img in lvis_json["images"]}
    by_image: dict[int, list[tuple[dict, float]]] = {}
    for ann in lvis_json["annotations"]:
        by_image.setdefault(ann["image_id"], []).append((ann, 0.95))
    for ann in hidden:
        by_image.setdefault(ann["image_id"], []).append((ann, 0.9))
        img = images[ann["image_id"]]
        if img["neg_category_ids"]:
            by_image[ann["image_id"]].append(({**ann, "category_id": img["neg_category_ids"][0]}, 0.97))
        by_image[ann["image_id"]].append((ann, 0.2))

    def run_chunk(
        predictor, items, category_map, *, batch_size, num_workers, on_images=None, skipped=None, dropped=None
    ):
        records = []
        for item in items:
            img = images[item.image_id]
            for ann, score in by_image.get(item.image_id, []):
                rle = ann_to_rle(ann, img["height"], img["width"])
                seg = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
                records.append(
                    {
                        "image_id": item.image_id,
                        "category_id": ann["category_id"],
                        "bbox": ann["bbox"],
                        "score": score,
                        "segmentation": seg,
                    }
                )
        return records

    return run_chunk


def test_lvis_missing_annotations_recall_of_known_hidden_instances(hidden_lvis, tmp_path, monkeypatch):
    import torch
    from torchvision.ops import box_iou

    from lvisctl.inference import runner
    from lvisctl.inference.pseudo_label_records import missing_recall

    run = RunDir(tmp_path / "run")
    _lvis_checkpoint(run, hidden_lvis["train"])
    train = json.loads(hidden_lvis["train"].read_text())
    hidden = hidden_lvis["hidden"]
    monkeypatch.setattr(runner, "run_chunk", _oracle_run_chunk(train, hidden))
    result = invoke("lvis", "--run-dir", run.root)  # default images: the checkpoint's training json
    assert result.exit_code == 0, result.output
    art = run.latest("pseudo-labels")
    assert art.meta["mode"] == "missing" and art.meta["score_thresh"] == "0.5"
    payload = json.loads(run.resolve(art).read_text())

    # expected: the hidden instances whose box touches no annotated box (the paper's "no overlap with GT")
    def xyxy(b):
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

    gt = {}
    for a in train["annotations"]:
        gt.setdefault(a["image_id"], []).append(xyxy(a["bbox"]))
    expected = [
        h
        for h in hidden
        if not gt.get(h["image_id"])
        or box_iou(torch.tensor([xyxy(h["bbox"])]), torch.tensor(gt[h["image_id"]])).max() == 0
    ]
    got = sorted((a["image_id"], a["category_id"], tuple(a["bbox"])) for a in payload["annotations"])
    assert got == sorted((h["image_id"], h["category_id"], tuple(h["bbox"])) for h in expected)
    recall = missing_recall(payload["annotations"], hidden)
    assert recall == pytest.approx(len(expected) / len(hidden))
    print(
        f"\nrecall of {len(hidden)} known unannotated instances at score 0.5 (oracle detector): {recall:.3f}"
    )
    root = str(hidden_lvis["train"].parent)
    check = CliRunner().invoke(app, ["data", "validate", str(run.resolve(art)), "--image-root", root])
    assert check.exit_code == 0, check.output


def test_lvis_category_filter_off_is_recorded_and_keeps_at_least_as_many(hidden_lvis, tmp_path, monkeypatch):
    from lvisctl.inference import runner

    run = RunDir(tmp_path / "run")
    _lvis_checkpoint(run, hidden_lvis["train"])
    train = json.loads(hidden_lvis["train"].read_text())
    monkeypatch.setattr(runner, "run_chunk", _oracle_run_chunk(train, hidden_lvis["hidden"]))
    assert invoke("lvis", "--run-dir", run.root, "--out", "on.json").exit_code == 0
    off = invoke("lvis", "--run-dir", run.root, "--out", "off.json", "pseudolabel.category_filter=false")
    assert off.exit_code == 0, off.output
    on_art, off_art = (run.latest("pseudo-labels", category_filter=v) for v in (True, False))
    assert on_art.path.endswith("on.json") and off_art.path.endswith("off.json")
    assert off_art.meta["num_labels"] >= on_art.meta["num_labels"]


def test_lvis_with_the_real_model_validates(hidden_lvis, tmp_path):
    run = RunDir(tmp_path / "run")
    _lvis_checkpoint(run, hidden_lvis["train"])
    args = ("--score-thresh", "0.0", "inference.detections_per_image=10", "inference.num_workers=0")
    result = invoke("lvis", "--run-dir", run.root, "--images", hidden_lvis["train"], *args)
    assert result.exit_code == 0, result.output
    art = run.latest("pseudo-labels")
    payload = json.loads(run.resolve(art).read_text())
    assert payload["annotations"] and all("segmentation" in a for a in payload["annotations"])
    assert {a["category_id"] for a in payload["annotations"]} <= {c["id"] for c in payload["categories"]}
    root = str(hidden_lvis["train"].parent)
    check = CliRunner().invoke(app, ["data", "validate", str(run.resolve(art)), "--image-root", root])
    assert check.exit_code == 0, check.output


# ------------------------------------------------------------------------------------ tta-infer on folders
def test_tta_infer_on_a_folder_and_an_image_list(run, tmp_path):
    from tests.helpers.lvis_reference import LVIS, LVISResults

    folder = make_folder(tmp_path / "imgs")
    args = ("--run-dir", run.root, "--images", folder, "inference.detections_per_image=5")
    result = CliRunner().invoke(app, ["tta-infer", *map(str, args)])
    assert result.exit_code == 0, result.output
    segm = run.latest("predictions", iou_type="segm")
    info_path = Path(segm.meta["gt"])
    assert info_path.parent == run.root / "predictions" and info_path.name.startswith("imgs-")
    assert info_path.name.endswith(".images.json") and segm.path.startswith("predictions/imgs-")
    info = json.loads(info_path.read_text())
    assert sorted(i["file_name"] for i in info["images"]) == ["0003.jpg", "a/0002.png", "a/b/0001.jpg"]
    assert [c["id"] for c in info["categories"]] == [3, 9, 40]  # the stage-2 checkpoint's
    records = json.loads(run.resolve(segm).read_text())
    assert {r["image_id"] for r in records} <= {i["id"] for i in info["images"]}
    gt = LVIS(str(info_path))
    assert len(LVISResults(gt, str(run.resolve(segm))).get_ann_ids()) == len(records)

    listed = tmp_path / "list.txt"
    listed.write_text("a/b/0001.jpg\n0003\n")
    args = ("--run-dir", run.root, "--images", folder, "--image-list", listed, "--out", run.root / "l.json")
    result = CliRunner().invoke(app, ["tta-infer", *map(str, args)])
    assert result.exit_code == 0, result.output
    sub = json.loads(Path(run.latest("predictions", iou_type="segm").meta["gt"]).read_text())
    ids = {i["file_name"]: i["id"] for i in info["images"]}
    assert {i["file_name"]: i["id"] for i in sub["images"]} == {
        k: ids[k] for k in ("a/b/0001.jpg", "0003.jpg")
    }


# ------------------------------------------------------------------------------------ training with them
def test_training_consumes_both_pseudolabel_outputs(hidden_lvis, tmp_path, capsys):
    """pseudolabel lvis + pseudolabel images (a folder) with the real tiny model, then a 2-iteration
    self-training run with data.pseudo_labels=latest data.extra_images=latest: it prints the counts."""
    from lvisctl.training import train
    from tests.helpers.engine_standins import real_tiny_config

    run = RunDir(tmp_path / "run")
    _lvis_checkpoint(run, hidden_lvis["train"])
    low = ("--score-thresh", "0", "inference.detections_per_image=3", "inference.num_workers=0")
    missing = invoke("lvis", "--run-dir", run.root, *low)
    assert missing.exit_code == 0, missing.output
    folder = hidden_lvis["train"].parent / "unlabeled2017"
    extra = invoke("images", "--run-dir", run.root, "--images", folder, *low)
    assert extra.exit_code == 0, extra.output
    made = {a.meta["mode"]: a for a in run.artifacts("pseudo-labels")}
    assert made["missing"].meta["source"] == "lvis" and made["unlabeled"].meta["source"] == "images"
    capsys.readouterr()
    cfg = real_tiny_config(
        **{
            "data.train": str(hidden_lvis["train"]),
            "data.pseudo_labels": "latest",
            "data.extra_images": "latest",
            "data.extra_per_epoch": 2,
            "solver.max_iter": 2,
        }
    )
    result = train(cfg, run.root, stage=1, phase="stage1_st")
    assert result.iteration == 2
    out = capsys.readouterr().out
    boxes = made["missing"].meta["num_labels"]
    ignored = len(
        {a["image_id"] for a in json.loads(run.resolve(made["missing"]).read_text())["annotations"]}
    )
    assert (
        f"self-training: data.pseudo_labels = {run.resolve(made['missing'])}: {boxes} ignore boxes on "
        f"{ignored} training images"
    ) in out
    n_extra, n_labels = made["unlabeled"].meta["num_images"], made["unlabeled"].meta["num_labels"]
    assert f"{n_extra} extra images with {n_labels} pseudo labels (images under {folder.resolve()})" in out
    ckpt = run.latest("checkpoint", phase="stage1_st", final=True)
    assert {i["path"] for i in ckpt.inputs} >= {made["missing"].path, made["unlabeled"].path}


def test_visualize_predictions_on_a_folder(run, tmp_path):
    """tta-infer on a folder, then visualize with every default: the image-info json next to the results
    says where the images are; pseudo-labelling's predictions are never the default."""
    folder = make_folder(tmp_path / "imgs")
    args = ("--run-dir", run.root, "--images", folder, "inference.detections_per_image=2")
    assert CliRunner().invoke(app, ["tta-infer", *map(str, args)]).exit_code == 0
    segm = run.latest("predictions", iou_type="segm")
    assert invoke("images", "--run-dir", run.root, "--images", folder, "--score-thresh", "0").exit_code == 0
    result = CliRunner().invoke(app, ["visualize", "--run-dir", str(run.root), "--score-thresh", "0"])
    assert result.exit_code == 0, result.output
    assert f"from {run.resolve(segm)}" in result.output and "on 3 images" in result.output
    out = run.root / "visualize" / segm.path[len("predictions/") : -len(".segm.json")]
    assert len(list(out.glob("*.png"))) == 4  # 3 images + the contact sheet


def test_interrupted_pseudolabel_resumes(run, tmp_path):
    """A time-limited job (--max-chunks) stops with exit 75 and no pseudo-label file; the same command
    continues from the finished chunks (the image-info json has the same name: same content)."""
    folder = make_folder(tmp_path / "oi")
    args = ("openimages", "--run-dir", run.root, "--image-root", folder, "--score-thresh", "0")
    chunked = ("inference.chunk_size=1", "inference.num_workers=0")
    first = invoke(*args, "--max-chunks", "1", *chunked)
    assert first.exit_code == 75, first.output
    assert not (run.root / "pseudo_labels").exists() and not run.artifacts("pseudo-labels")
    partial = list((run.root / ".partial").rglob("rank0_*.json"))
    assert len(partial) == 1
    done = invoke(*args, *chunked)
    assert done.exit_code == 0, done.output
    resumed = run.latest("pseudo-labels")
    assert resumed.meta["num_images"] == 3
    resumed_anns = json.loads(run.resolve(resumed).read_text())["annotations"]
    assert invoke(*args, *chunked, "--out", "again.json").exit_code == 0  # in one go
    assert json.loads((run.root / "again.json").read_text())["annotations"] == resumed_anns
