"""Issue 22 items 12, 14, 24, 25: import-checkpoint refuses what cannot be meant, reads legacy files."""

import argparse

import pytest
import torch

from lvisctl.checkpoint_import.reader import read_checkpoint_file
from lvisctl.engine.checkpoint import load_checkpoint
from lvisctl.errors import LvisctlError


class ZooMeta:  # stands for an mmcv object in an old mmdet file's meta: never called by the reader
    def __init__(self):
        self.mode = "zoo"


def test_legacy_format_is_read_through_the_safe_reader(tmp_path):
    """Item 25: pre-1.6 files were refused as 'top level is int'."""
    state = {"conv.weight": torch.arange(12.0).reshape(3, 4), "n": torch.tensor([7], dtype=torch.int64)}
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=False)
    loaded = read_checkpoint_file(path)
    assert set(loaded.obj["state_dict"]) == {"conv.weight", "n"}
    assert torch.equal(loaded.obj["state_dict"]["conv.weight"], state["conv.weight"])

    # with an object a weights-only load refuses: the restricted legacy reader, the object skipped
    meta_path = tmp_path / "legacy_meta.pth"
    torch.save({"state_dict": state, "meta": ZooMeta()}, meta_path, _use_new_zipfile_serialization=False)
    loaded = read_checkpoint_file(meta_path)
    assert loaded.kind == "torch-legacy"
    assert torch.equal(loaded.obj["state_dict"]["conv.weight"], state["conv.weight"])
    assert torch.equal(loaded.obj["state_dict"]["n"], state["n"])
    assert any(name.endswith("ZooMeta") for name in loaded.skipped)


def test_legacy_file_with_a_lying_storage_size_is_one_line(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(4), "meta": ZooMeta()}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    count = (4).to_bytes(8, "little")
    at = data.rfind(count)  # the element count before the data block
    data[at : at + 8] = (10**12).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(LvisctlError) as err:
        read_checkpoint_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: legacy (pre-1.6) torch checkpoint") and "convert it" in message
    assert "\n" not in message


def test_torch_refusal_is_ours_not_torchs(tmp_path):
    """Item 24: torch's text (ANSI escapes, 'set weights_only=False') is never passed on."""
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "meta": argparse.Namespace(x=1)}, path)
    with pytest.raises(LvisctlError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "\x1b" not in message and "weights_only" not in message and "\n" not in message
    assert "argparse.Namespace" in message and message.startswith(f"{path}: not a loadable checkpoint")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("fmt", ["torch", "detectron2-pkl"])
def test_non_finite_weights_are_refused_and_nothing_written(tmp_path, bad, fmt):
    """Item 12: NaN / Inf weights were imported (exit 0)."""
    import json
    import pickle

    from lvisctl.checkpoint_import import import_checkpoint
    from tests.helpers.checkpoint_files import FIXTURE, _fake_state

    state = _fake_state(json.loads(FIXTURE.read_text())["mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"])
    key = sorted(k for k in state if k.endswith("conv1.weight"))[0]
    state[key].view(-1)[3] = bad
    if fmt == "torch":
        path = tmp_path / "mmdet.pth"
        torch.save({"state_dict": state, "meta": {}}, path)
    else:
        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in state.items()}}))
    with pytest.raises(LvisctlError) as err:
        import_checkpoint(path, tmp_path / "run")
    assert "hold NaN or Inf values" in str(err.value) and key in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_error_line_has_no_leading_blank_nul_or_escape(monkeypatch, capsys):
    """Item 24: stderr started with an empty line or printed a raw NUL."""
    import lvisctl.cli.app as cli_app
    from lvisctl.errors import printable

    def failing():
        raise LvisctlError("\n\x1b[1mbad\x1b[0m\x00name\n  second line")

    monkeypatch.setattr(cli_app, "app", failing)
    with pytest.raises(SystemExit) as code:
        cli_app._run()  # main() minus the console log, which needs the real Typer app
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: bad\\x00name second line\n"
    assert printable("\ta\x7f") == "a\\x7f"


def test_detectron2_pkl_with_a_1d_stem_weight_is_one_line(tmp_path):
    """Item 23: a 1-D stem weight was a traceback (IndexError in the BGR -> RGB flip)."""
    import pickle

    from lvisctl.checkpoint_import import import_checkpoint
    from tests.helpers.checkpoint_files import _d2_pkl

    path, state = _d2_pkl(tmp_path, depth=50)
    state["backbone.bottom_up.stem.conv1.weight"] = state["backbone.bottom_up.stem.conv1.weight"].reshape(-1)
    path.write_bytes(pickle.dumps({"model": state}, protocol=2))
    with pytest.raises(LvisctlError) as err:
        import_checkpoint(path, tmp_path / "run")
    assert "backbone.bottom_up.stem.conv1.weight" in str(err.value) or "stem" in str(err.value)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_torchvision_classifier_of_unknown_classes_is_never_kept_by_id_equals_index():
    """Item 14: a torchvision classifier of another count was kept on a json whose ids are 1..K."""
    import torchvision

    from lvisctl.checkpoint_import.categories import classes_match
    from lvisctl.checkpoint_import.layouts import map_torchvision
    from lvisctl.data.categories import CategoryStats

    def stats(ids):
        n = len(ids)
        return CategoryStats.from_dict(
            {
                "cat_ids": ids,
                "names": [f"c{i}" for i in ids],
                "image_count": [1] * n,
                "instance_count": [1] * n,
                "frequency": ["f"] * n,
                "num_images": 1,
            }
        )

    custom = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=9
    )
    mapped = map_torchvision(custom.state_dict())
    assert mapped.classes.count == 8 and mapped.classes.ids is None
    assert not classes_match(mapped.classes, stats(list(range(1, 9))))
    coco = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    mapped = map_torchvision(coco.state_dict())
    assert mapped.classes.ids == tuple(range(1, 91))  # the documented COCO slots stay known
    assert not classes_match(mapped.classes, stats(list(range(1, 9))))


def test_existing_import_error_names_options_import_checkpoint_has(tmp_path):
    """Item 24: the error suggested --out, which import-checkpoint lacks."""
    from lvisctl.checkpoint_import import import_checkpoint
    from tests.helpers.checkpoint_files import _mmdet_file

    path, _ = _mmdet_file(tmp_path, "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")
    import_checkpoint(path, tmp_path / "run")
    with pytest.raises(LvisctlError) as err:
        import_checkpoint(path, tmp_path / "run")
    assert "already exists" in str(err.value) and "--out" not in str(err.value)
    assert "--overwrite" in str(err.value) and "--run-dir" in str(err.value)


def test_a_folder_given_as_a_checkpoint_says_so(tmp_path):
    """Item 24: a directory given as FILE was 'file not found'."""
    with pytest.raises(LvisctlError, match="is a folder, not a checkpoint file"):
        read_checkpoint_file(tmp_path)
    with pytest.raises(LvisctlError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)
