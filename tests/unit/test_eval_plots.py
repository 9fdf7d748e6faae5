"""The AP-by-frequency chart: bar heights and labels, and a real PNG."""

from __future__ import annotations

from PIL import Image

from lvisctl.evaluation.plots import SIZE, bar_layout, plot_ap_by_frequency


def test_bar_layout_in_percent_with_na_for_missing_frequencies():
    metrics = {"segm": {"APr": -1.0, "APc": 0.25, "APf": 0.5}, "bbox": {"APr": 0.125}}
    assert bar_layout(metrics) == [
        ("segm", 0, 0.0, "n/a"),
        ("segm", 1, 25.0, "25.0"),
        ("segm", 2, 50.0, "50.0"),
        ("bbox", 0, 12.5, "12.5"),
        ("bbox", 1, 0.0, "n/a"),  # a key that is absent counts as -1
        ("bbox", 2, 0.0, "n/a"),
    ]


def test_png_is_written_with_one_colour_per_series(tmp_path):
    path = plot_ap_by_frequency(
        {"segm": {"APr": 0.1, "APc": 0.2, "APf": 0.3}, "bbox": {"APf": 0.4}}, tmp_path / "p.png"
    )
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == SIZE
        colours = {c for _, c in img.convert("RGB").getcolors(1 << 16)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # segm and bbox bars
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
