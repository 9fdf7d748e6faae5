"""The compiled reader of the GT annotations' box fields (``_gt_kernel``, used by a box-only evaluation):
the same columns as the Python route through hotcoco's dataset, or a refusal (then the Python route)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lvisctl.evaluation import fast_eval
from lvisctl.evaluation.lvis_metrics import load_ground_truth
from tests.helpers.eval_cases import edge_case_gt, random_case
from tests.helpers.lvis_reference import gt_rect, lvis_dataset, lvis_image

pytest.importorskip("numba")

FIELDS = ("image_ids", "cat_ids", "heights", "widths", "g_start", "g_cat", "g_area", "g_ign", "g_box")


def _both(tmp_path, dataset, text=None):
    path = tmp_path / "gt.json"
    path.write_text(text if text is not None else json.dumps(dataset), encoding="utf-8")
    compiled = fast_eval._box_columns(
        load_ground_truth(path),
        np.array(sorted(r["id"] for r in dataset["images"]), np.int64),
        np.array(sorted(c["id"] for c in dataset["categories"]), np.int64),
    )
    boxes = fast_eval.gt_arrays(load_ground_truth(path), masks=False)
    python = fast_eval.gt_arrays(load_ground_truth(path), masks=True)
    return compiled, boxes, python


def _assert_same(boxes, python):
    assert boxes.anns is None and python.anns is not None
    for f in FIELDS:
        a, b = getattr(boxes, f), getattr(python, f)
        assert a.dtype == b.dtype and np.array_equal(a, b), f
    for f in ("neg", "not_exhaustive"):
        assert all(np.array_equal(a, b) for a, b in zip(getattr(boxes, f), getattr(python, f), strict=True))


def _many(seed: int) -> dict:
    """40 images with 0-8 boxes each over the edge case's categories; areas and boxes with decimals."""
    rng = np.random.default_rng(seed)
    base = edge_case_gt()
    cats = [c["id"] for c in base["categories"]]
    images, anns = [], []
    for img in range(1, 41):
        neg = sorted(int(c) for c in rng.choice(cats, 2, replace=False))
        images.append(lvis_image(img * 3, 64, 80, neg=neg, not_exhaustive=neg[:1] if img % 5 else []))
        for _ in range(int(rng.integers(0, 9))):
            ann = gt_rect(len(anns) + 1, img * 3, int(rng.choice(cats)), *map(int, rng.integers(1, 30, 4)))
            ann["bbox"] = [round(float(v) + 0.25, 2) for v in ann["bbox"]]
            ann["area"] = round(ann["bbox"][2] * ann["bbox"][3], 4)
            anns.append(ann)
    return lvis_dataset(images, anns, base["categories"])


def _shuffled(dataset, seed):
    """The annotations out of image order, some of area 0, one ignored, odd spacing and extra fields."""
    rng = np.random.default_rng(seed)
    anns = [dict(a) for a in dataset["annotations"]]
    rng.shuffle(anns)
    anns[0]["area"] = 0.0
    anns[-1]["ignore"] = 1
    anns[len(anns) // 2].update(iscrowd=0, note='caf\u00e9 "quoted" [x] {y}')
    return {
        **dataset,
        "annotations": anns,
        "info": {"description": "\u00e9t\u00e9", "nested": [[1, {"a": []}]]},
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_columns_as_the_python_route(tmp_path, seed):
    dataset = _many(seed) if seed else random_case(seed)[0]
    compiled, boxes, python = _both(tmp_path, _shuffled(dataset, seed))
    assert compiled is not None and len(python.g_cat) == len(dataset["annotations"]) - 1  # less area 0
    _assert_same(boxes, python)


def test_edge_case_gt_and_whitespace(tmp_path):
    dataset = edge_case_gt()
    compiled, boxes, python = _both(tmp_path, dataset, text=json.dumps(dataset, indent=3))
    assert compiled is not None
    _assert_same(boxes, python)


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.update(area=0.1 + 0.2),  # 17 significant digits: needs its text to convert exactly
        lambda a: a.update(image_id=1.0),  # not an integer id
        lambda a: a.update(ignore=True),
        lambda a: a.update(bbox=[1, 2, 3]),
    ],
    ids=["long float", "float id", "boolean ignore", "3-number box"],
)
def test_refused_where_it_would_have_to_interpret(tmp_path, change):
    dataset = edge_case_gt()
    change(dataset["annotations"][2])
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset), encoding="utf-8")
    try:
        gt = load_ground_truth(path)
    except Exception:  # hotcoco itself refuses some of these: nothing for the reader to do
        return
    ids = np.array(sorted(r["id"] for r in dataset["images"]), np.int64)
    cats = np.array(sorted(c["id"] for c in dataset["categories"]), np.int64)
    assert fast_eval._box_columns(gt, ids, cats) is None


def test_a_box_evaluation_scores_the_same_through_either_reader(tmp_path):
    from lvisctl.evaluation.pipeline import run_evaluate

    dataset, results = random_case(3)
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(_shuffled(dataset, 3)))
    res_path.write_text(json.dumps(results))
    box_only = run_evaluate(res_path, gt=gt_path, iou_types=("bbox",)).metrics["bbox"]
    both = run_evaluate(res_path, gt=gt_path, iou_types=("segm", "bbox")).metrics["bbox"]
    assert box_only == both


def _read(text: str):
    """``_gt_kernel.read_annotations`` on ``text``: (rows, ints, flt)."""
    from lvisctl.evaluation import _gt_kernel as G

    keys = tuple(np.frombuffer(k, np.uint8) for k in fast_eval._GT_KEYS)
    ints, flt = np.zeros((8, 3), np.int64), np.zeros((8, 5), np.float64)
    rows = G.read_annotations(np.frombuffer(text.encode(), np.uint8), keys, ints, flt)
    return rows, ints[: max(rows, 0)], flt[: max(rows, 0)]


def test_the_kernel_reads_fields_in_any_order_and_ignore_defaults_to_0():
    text = (
        '{"images": [], "annotations": [{"bbox": [1, 2, 3.5, 4], "segmentation": [[1, 2, "}"]], "area": 14, '
        '"ignore": 1, "category_id": 7, "image_id": 3}, {"image_id": 4, "category_id": 8, "area": 2.5, '
        '"bbox": [0, 0, 1, 2.5]}], "categories": []}'
    )
    rows, ints, flt = _read(text)
    assert rows == 2
    assert ints.tolist() == [[3, 7, 1], [4, 8, 0]]
    assert flt.tolist() == [[14.0, 1.0, 2.0, 3.5, 4.0], [2.5, 0.0, 0.0, 1.0, 2.5]]


@pytest.mark.parametrize("field", ['"image_id": 5', '"area": 3', '"bbox": [0, 0, 1, 3]', '"ignore": 0'])
def test_the_kernel_refuses_a_repeated_field(field):
    """hotcoco refuses such a file itself; the reader does not rely on it (json keeps the last one)."""
    one = '{"image_id": 4, "category_id": 8, "area": 2.5, "bbox": [0, 0, 1, 2.5], "ignore": 0'
    from lvisctl.evaluation import _gt_kernel as G

    assert _read('{"annotations": [' + one + "}]}")[0] == 1
    assert _read('{"annotations": [' + one + ", " + field + "}]}")[0] == G.REFUSED


@pytest.mark.parametrize(
    "drop", ['"image_id": 4, ', '"category_id": 8, ', '"area": 2.5, ', ', "bbox": [0, 0, 1, 2.5]']
)
def test_the_kernel_refuses_a_missing_required_field(drop):
    from lvisctl.evaluation import _gt_kernel as G

    one = '{"image_id": 4, "category_id": 8, "area": 2.5, "bbox": [0, 0, 1, 2.5]}'
    assert _read('{"annotations": [' + one.replace(drop, "", 1) + "]}")[0] == G.REFUSED
