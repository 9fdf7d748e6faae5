"""Issue 26 item 5: configs a user can keep (packaged `_base_`), TTA ranges for any --scales, `inf`."""

from __future__ import annotations

import math

import pytest

from lvisctl.config import load_config
from lvisctl.errors import LvisctlError
from lvisctl.inference.tta_settings import TTASettings, auto_ranges, covered_gaps
from tests.helpers.cli import invoke as cli_invoke


def invoke(*args):
    return cli_invoke("tta-infer", *args)


def test_base_takes_a_packaged_config_by_scope(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("_base_: lvisctl::stage1/r50_da_eql_rfs\nsolver:\n  max_iter: 7\n")
    cfg = load_config(mine, [])
    packaged = load_config("stage1/r50_da_eql_rfs", [])
    assert cfg.solver.max_iter == 7 and cfg.model.roi_heads.cls_loss == packaged.model.roi_heads.cls_loss
    assert cfg.sampler.to_dict() == packaged.sampler.to_dict()


def test_base_bare_name_falls_back_to_the_packaged_config_and_a_local_file_wins(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("_base_: stage1/r50_da_eql_rfs\n")
    assert (
        load_config(mine, []).sampler.to_dict() == load_config("stage1/r50_da_eql_rfs", []).sampler.to_dict()
    )
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "r50_da_eql_rfs").write_text("solver:\n  max_iter: 3\n")
    assert load_config(mine, []).solver.max_iter == 3


def test_base_unknown_packaged_name_is_one_line(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("_base_: lvisctl::stage1/nope\n")
    with pytest.raises(LvisctlError, match=r"mine.yaml: _base_ lvisctl::stage1/nope: no packaged config"):
        load_config(mine, [])
    mine.write_text("_base_: nope.yaml\n")
    with pytest.raises(LvisctlError, match="no such file next to it, and no packaged config"):
        load_config(mine, [])


def test_auto_ranges_equal_the_packaged_ones_for_the_packaged_scales():
    assert auto_ranges((400, 600, 800, 1000, 1200, 1400)) == TTASettings.valid_ranges


@pytest.mark.parametrize("scales", [(600, 800, 1000), (400, 1400), (800,), (300, 500), (1300, 1600, 2000)])
def test_other_scales_get_ranges_instead_of_a_refusal(scales):
    cfg = load_config(None, ["inference.tta.mode=paper"])
    settings = TTASettings.from_config(cfg.inference.tta, scales=scales)
    assert len(settings.valid_ranges) == len(scales) and covered_gaps(settings.valid_ranges) == []
    if len(scales) == 3 and scales[0] == 600:
        assert settings.valid_ranges == ((32.0, math.inf), (0.0, math.inf), (0.0, 256.0))


def test_ranges_a_user_set_are_still_checked_against_the_scales():
    cfg = load_config(None, ["inference.tta.valid_ranges=[[0,null],[16,64]]"])
    with pytest.raises(LvisctlError, match="2 ranges for 3 test scales"):
        TTASettings.from_config(cfg.inference.tta, scales=(400, 800, 1200))


@pytest.mark.parametrize("hi", ["inf", ".inf", "Infinity"])
def test_inf_is_accepted_as_no_upper_limit(hi):
    cfg = load_config(None, [f"inference.tta.valid_ranges=[[0,{hi}],[16,64]]"])
    settings = TTASettings.from_config(cfg.inference.tta, scales=(400, 800))
    assert settings.valid_ranges == ((0.0, math.inf), (16.0, 64.0))


def test_tta_infer_paper_at_other_scales_runs_and_records_the_derived_ranges(setup):
    """The CLI path: `--tta paper --scales a,b` with the packaged ranges is no longer refused."""
    run, images, _ = setup
    result = invoke("--run-dir", run.root, "--images", images, "--tta", "paper", "--scales", "40,56")
    assert result.exit_code == 0, result.output
    assert run.latest("predictions").meta["scales"] == [40, 56]


@pytest.mark.parametrize("how", ["file", "override"])
def test_valid_ranges_auto_loads_and_derives_the_ranges_from_the_scales(tmp_path, how):
    mine = tmp_path / "mine.yaml"
    mine.write_text("inference:\n  tta:\n    valid_ranges: auto\n")
    cfg = load_config(mine, []) if how == "file" else load_config(None, ["inference.tta.valid_ranges=auto"])
    assert cfg.inference.tta.valid_ranges == "auto"
    settings = TTASettings.from_config(cfg.inference.tta, scales=(600, 800, 1000))
    assert settings.valid_ranges == ((32.0, math.inf), (0.0, math.inf), (0.0, 256.0))
    packaged = TTASettings.from_config(cfg.inference.tta)
    assert packaged.valid_ranges == TTASettings.valid_ranges


@pytest.mark.parametrize(
    "override",
    ["inference.tta.valid_ranges=automatic", "inference.tta.scales=auto", "inference.max_size=auto"],
)
def test_auto_is_a_word_of_valid_ranges_only(override):
    with pytest.raises(LvisctlError, match=override.split("=")[0]):
        load_config(None, [override])


def test_tta_infer_paper_with_valid_ranges_auto_runs_at_other_scales(setup):
    run, images, _ = setup
    result = invoke(
        "--run-dir", run.root, "--images", images, "--tta", "paper", "--scales", "40,56,72",
        "inference.tta.valid_ranges=auto",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert run.latest("predictions").meta["scales"] == [40, 56, 72]
