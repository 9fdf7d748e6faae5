"""Eq. 1 vs the box rule on GT instances, and the hm preset where they differ."""

import pytest

from lvisctl.analysis.levels import level_disagreement
from lvisctl.data.synth import generate_synthetic_lvis


def _ann(w, h, area):
    return {"bbox": [0, 0, w, h], "area": area}


def test_hand_made_levels():
    anns = [
        _ann(150, 150, 0.1 * 150 * 150),  # box: floor(log2(150/56)) = 1 (P3); ratio 0.1 -> Eq. 1: P2
        _ann(150, 150, 0.9 * 150 * 150),  # ratio 0.9 -> area term 3; min(1, 3) = 1: same level
        _ann(40, 40, 100),  # box level 0 already: nothing to move
        _ann(300, 300, 0.3 * 300 * 300),  # box: floor(log2(300/56)) = 2 (P4); area term 1 -> P3
    ]
    d = level_disagreement(anns)
    assert d["moved"] == 2 and d["instances"] == 4
    assert d["fraction_moved"] == pytest.approx(0.5)
    assert d["box_rule"] == {"P2": 1, "P3": 2, "P4": 1, "P5": 0}
    assert d["eq1"] == {"P2": 2, "P3": 2, "P4": 0, "P5": 0}
    # at half size every box falls to P2 under both rules
    assert level_disagreement(anns, scale=0.25)["moved"] == 0


def test_hm_preset_moves_a_stated_fraction_the_demo_preset_none(tmp_path):
    import json

    hm = generate_synthetic_lvis(
        tmp_path / "hm",
        preset="hm",
        train_images=60,
        val_images=8,
        test_images=2,
        unlabeled_images=2,
        write_images=False,
    )
    anns = json.loads(hm["train"].read_text())["annotations"]
    d = level_disagreement(anns)
    assert d["fraction_moved"] >= 0.2, d  # README states the measured fraction on the full preset
    ratios = [a["area"] / (a["bbox"][2] * a["bbox"][3]) for a in anns]
    assert min(ratios) < 0.15 and max(ratios) > 0.8
    demo = generate_synthetic_lvis(
        tmp_path / "demo",
        preset="demo",
        train_images=60,
        val_images=8,
        test_images=2,
        unlabeled_images=2,
        write_images=False,
    )
    assert level_disagreement(json.loads(demo["train"].read_text())["annotations"])["moved"] == 0
