"""The one streaming json reader (lvisctl/data/json_stream.py): results lists, cut anywhere."""

from __future__ import annotations

import json

import pytest

from lvisctl.data.json_stream import iter_json_list
from lvisctl.errors import LvisctlError


def test_list_elements_across_read_boundaries(tmp_path):
    items = [{"a": i, "s": "x]," * i, "n": [1.5, {"b": None}]} for i in range(7)] + [12345]
    path = tmp_path / "r.json"
    path.write_text(" [" + ",".join(json.dumps(x) for x in items) + "] \n")
    for read_size in (1, 3, 7, 64, 1 << 20):  # objects and a trailing number cut anywhere
        assert list(iter_json_list(path, read_size=read_size)) == items
    (tmp_path / "e.json").write_text("[]")
    assert list(iter_json_list(tmp_path / "e.json")) == []


@pytest.mark.parametrize("text", ['[{"a": 1}, {"a": ', '[{"a": 1}, ', '[{"a": 1}'])
def test_a_list_cut_short_is_truncated(tmp_path, text):
    (tmp_path / "t.json").write_text(text)
    with pytest.raises(LvisctlError, match="t.json: truncated json list"):
        list(iter_json_list(tmp_path / "t.json", read_size=4))


def test_not_a_list_and_too_deep(tmp_path):
    (tmp_path / "o.json").write_text('{"images": []}')
    with pytest.raises(LvisctlError, match="o.json: not a json list"):
        list(iter_json_list(tmp_path / "o.json"))
    (tmp_path / "d.json").write_text("[" + "[" * 100_000)
    with pytest.raises(LvisctlError, match="d.json: not valid json .nested too deeply to be a results file"):
        list(iter_json_list(tmp_path / "d.json"))
