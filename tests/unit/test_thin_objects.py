import math

from lvisctl.evaluation.thin_objects import ap_thin_vs_rest, median_area_ratio, thin_categories


def test_median_ratio_and_thin_split_by_hand():
    anns = [
        {"category_id": 1, "bbox": [0, 0, 10, 10], "area": 10.0},  # 0.1
        {"category_id": 1, "bbox": [0, 0, 20, 10], "area": 30.0},  # 0.15
        {"category_id": 1, "bbox": [0, 0, 10, 10], "area": 90.0},  # 0.9 -> median 0.15
        {"category_id": 2, "bbox": [0, 0, 4, 5], "area": 16.0},  # 0.8
        {"category_id": 3, "bbox": [0, 0, 0, 5], "area": 0.0},  # degenerate box: ignored
    ]
    assert median_area_ratio(anns) == {1: 0.15, 2: 0.8}
    assert thin_categories(anns) == {1}


def test_ap_thin_vs_rest_skips_categories_without_gt():
    ap = {1: 0.2, 2: 0.6, 3: float("nan"), 4: 0.4}
    out = ap_thin_vs_rest(ap, thin={1, 3})
    assert out["AP_thin"] == 0.2 and out["num_thin"] == 1
    assert math.isclose(out["AP_rest"], 0.5) and out["num_rest"] == 2
