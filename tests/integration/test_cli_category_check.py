"""Issue 22 item 10: ``tta-infer`` compares the checkpoint's category table (ids, names) with the json's."""

import json

import pytest

from lvisctl.data.categories import CategoryStats
from lvisctl.errors import LvisctlError
from lvisctl.inference.category_check import check_categories
from tests.helpers.cli import invoke as cli_invoke


def invoke(*args):
    return cli_invoke("tta-infer", *args)


def edited(images, tmp_path, change) -> object:
    data = json.loads(images.read_text())
    change(data["categories"])
    out = images.parent / "edited.json"
    out.write_text(json.dumps(data))
    return out


def swap_names(cats):
    cats[0]["name"], cats[1]["name"] = cats[1]["name"], cats[0]["name"]


def add_category(cats):
    cats.append({**cats[0], "id": 77, "name": "c77", "synset": "c77.n.01", "synonyms": ["c77"]})


@pytest.mark.parametrize("change", [swap_names, add_category], ids=["names-swapped", "more-categories"])
def test_refuses_a_json_of_another_category_table(setup, tmp_path, change):  # noqa: F811
    run, images, _ = setup
    other = edited(images, tmp_path, change)
    result = invoke("--run-dir", run.root, "--images", other)
    assert isinstance(result.exception, LvisctlError), result.output
    message = str(result.exception)
    assert "categories differ from those of checkpoint" in message and "--map-by-name" in message
    assert not (run.root / "predictions").exists()  # nothing written, nothing registered
    assert not run.find("predictions")


def test_map_by_name_writes_the_json_ids_of_the_same_names(setup, tmp_path):  # noqa: F811
    run, images, _ = setup
    out = run.root / "predictions"  # inside the run dir: recorded in its manifest (outside: not, issue 22)
    plain = invoke("--run-dir", run.root, "--images", images, "--out", out / "plain.json")
    assert plain.exit_code == 0, plain.output
    other = edited(images, tmp_path, swap_names)  # id 3 is now "c9", id 9 "c3"
    mapped = invoke("--run-dir", run.root, "--images", other, "--out", out / "mapped.json", "--map-by-name")
    assert mapped.exit_code == 0, mapped.output
    assert "mapped by name: 3 of 3 matched, 2 to another id" in mapped.output
    swap = {3: 9, 9: 3, 40: 40}
    want = [
        (r["image_id"], swap[r["category_id"]], r["score"])
        for r in json.loads((out / "plain.segm.json").read_text())
    ]
    got = [
        (r["image_id"], r["category_id"], r["score"])
        for r in json.loads((out / "mapped.segm.json").read_text())
    ]
    assert sorted(got) == sorted(want) and got
    assert run.get("predictions/mapped.segm.json").meta["categories"] == "by name"


def stats_of(ids, names):
    n = len(ids)
    return CategoryStats.from_dict(
        {
            "cat_ids": ids,
            "names": names,
            "image_count": [1] * n,
            "instance_count": [1] * n,
            "frequency": ["f"] * n,
            "num_images": 1,
        }
    )


def test_same_table_passes_and_by_name_drops_unknown_classes():
    stats = stats_of([1, 2, 3], ["a", "b", "c"])
    cats = {1: {"id": 1, "name": "a"}, 2: {"id": 2, "name": "b"}, 3: {"id": 3, "name": "c"}}
    assert check_categories(stats, cats, json_path="j", checkpoint="k") is stats.category_map
    two = {5: {"id": 5, "name": "c"}, 6: {"id": 6, "name": "a"}}
    with pytest.raises(LvisctlError, match="3 categories in the checkpoint, 2 in the json"):
        check_categories(stats, two, json_path="j", checkpoint="k")
    mapped = check_categories(stats, two, json_path="j", checkpoint="k", by_name=True)
    assert [mapped.cat_id(i) for i in (1, 2, 3)] == [6, None, 5]
    with pytest.raises(LvisctlError, match="none of the 3 category names"):
        check_categories(stats, {9: {"id": 9, "name": "z"}}, json_path="j", checkpoint="k", by_name=True)
    # ids only (a checkpoint without real names): the ids decide
    nameless = stats_of([1, 2, 3], ["1", "2", "3"])
    assert check_categories(nameless, cats, json_path="j", checkpoint="k") is nameless.category_map
