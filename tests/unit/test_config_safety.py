"""Issue 22 items 8 and 9: a config file is untrusted input. Aliases (a YAML "billion laughs") are
refused, list values have the default's element types, duplicate keys are named, and only regular files
of bounded size are read (``/dev/zero`` would be read forever)."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from lvisctl.cli.app import app
from lvisctl.config import load_config
from lvisctl.errors import LvisctlError

LAUGHS = """\
inference:
  tta:
    valid_ranges: &l9 [*l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8]
"""


def _billion_laughs() -> str:
    lines = ['a0: &l0 ["lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "x_anchors:\n" + "\n".join("  " + line for line in lines) + "\n" + LAUGHS


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(_billion_laughs())
    with pytest.raises(LvisctlError, match=r"line 3: YAML aliases \(\*name\) are not accepted"):
        load_config(path)
    small = tmp_path / "alias.yaml"  # a single harmless alias is refused the same way
    small.write_text("solver:\n  base_lr: &lr 0.01\n  warmup_factor: *lr\n")
    with pytest.raises(LvisctlError, match="YAML aliases"):
        load_config(small)


@pytest.mark.parametrize(
    "value, problem",
    [
        ('[["lol", "lol"]]', "'lol' is a string; expected number elements"),
        ("[[1, 2, 3]]", "has 3 elements; expected 2"),
        ("[1, 2]", "1 is a number; expected list elements"),
        ('["a"]', "'a' is a string; expected list elements"),
    ],
)
def test_list_values_have_the_defaults_element_types(tmp_path, value, problem):
    path = tmp_path / "c.yaml"
    path.write_text(f"inference:\n  tta:\n    valid_ranges: {value}\n")
    with pytest.raises(LvisctlError, match="inference.tta.valid_ranges must be list") as err:
        load_config(path)
    assert problem in str(err.value)
    with pytest.raises(LvisctlError, match="valid_ranges must be list"):
        load_config(None, [f"inference.tta.valid_ranges={value}"])
    ok = load_config(None, ["inference.tta.valid_ranges=[[0, null], [16, 256]]"])
    assert ok.inference.tta.valid_ranges == [[0, None], [16, 256]]


def test_duplicate_keys_warn_naming_the_key(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("solver:\n  base_lr: 0.1\n  base_lr: 0.02\n")
    cfg = load_config(path)
    err = capsys.readouterr().err
    assert cfg.solver.base_lr == 0.02
    assert f"warning: {path}: line 3: duplicate key 'base_lr'; the last value is used" in err


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_and_huge_files_are_not_configs(tmp_path, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    for args in (["configs", "show", device], ["train", "--config", device, "--run-dir", tmp_path / "r"]):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert isinstance(result.exception, LvisctlError), result.output
        assert "not a regular file" in str(result.exception)
    assert not (tmp_path / "r").exists()
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    with pytest.raises(LvisctlError, match="larger than 1 MiB"):
        load_config(big)
