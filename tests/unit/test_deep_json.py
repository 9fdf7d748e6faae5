"""Issue 22 item 23: json nested 100k deep was a RecursionError traceback in every reader."""

import pytest

from lvisctl.data.lvis import load_lvis
from lvisctl.errors import LvisctlError
from lvisctl.evaluation.results_io import load_results
from lvisctl.inference.ensemble_inputs import read_results_input
from lvisctl.rundir.io import read_json
from lvisctl.visualization.render import iter_predictions

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "read",
    [load_results, read_results_input, lambda p: list(iter_predictions(p)), read_json],
    ids=["evaluate", "ensemble", "visualize", "rundir-read_json"],
)
def test_deep_results_list_is_one_line(tmp_path, read):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(LvisctlError, match="nested too deeply") as err:
        read(path)
    assert str(err.value).startswith(str(path))


def test_deep_lvis_file_is_one_line(tmp_path):
    path = tmp_path / "deep_lvis.json"
    path.write_text('{"images": ' + DEEP + ', "annotations": [], "categories": []}')
    with pytest.raises(LvisctlError, match="nested too deeply to be an LVIS file"):
        load_lvis(path)
