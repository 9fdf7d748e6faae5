"""Evaluation figures, written atomically as PNG.

The AP-by-frequency chart is a handful of bars, drawn with Pillow: importing matplotlib alone takes
0.5-0.8 s, more than the rest of ``evaluate``'s own work on top of hotcoco, and ``evaluate`` must stay
within 10% of the bare evaluator at LVIS-val scale.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lvisctl.rundir.io import atomic_output

FREQ_KEYS = ("APr", "APc", "APf")
FREQ_NAMES = ("rare", "common", "frequent")
# matplotlib's default colour cycle, so the chart looks like the project's other figures.
COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
SIZE = (600, 350)
PLOT_BOX = (60, 40, 585, 310)  # left, top, right, bottom of the axes


def bar_layout(metrics: Mapping[str, Mapping[str, float]]) -> list[tuple[str, int, float, str]]:
    """(label, frequency index, bar height in AP %, text above the bar) for every bar.

    -1 (no categories of that frequency) is drawn as 0 and labelled ``n/a``.
    """
    bars = []
    for label, m in metrics.items():
        for j, key in enumerate(FREQ_KEYS):
            v = float(m.get(key, -1.0))
            bars.append((label, j, 100 * max(v, 0.0), "n/a" if v < 0 else f"{100 * v:.1f}"))
    return bars


def plot_ap_by_frequency(metrics: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Grouped bars of AP on rare / common / frequent categories, one colour per iou type (or metric)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=11)
    left, top, right, bottom = PLOT_BOX
    labels = list(metrics)
    bars = bar_layout(metrics)
    y_max = max([10.0] + [h for *_, h, _ in bars]) * 1.25  # room for the labels and legend
    to_y = lambda v: bottom - (bottom - top) * v / y_max  # noqa: E731
    # y axis with ticks every 10 (or 20) AP points
    step = 10 if y_max <= 60 else 20
    for tick in range(0, int(y_max) + 1, step):
        y = to_y(tick)
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((left - 6, y), str(tick), fill="black", font=font, anchor="rm")
    group_w = (right - left) / len(FREQ_KEYS)
    bar_w = 0.8 * group_w / max(len(labels), 1)
    for label, j, height, text in bars:
        i = labels.index(label)
        x0 = left + group_w * (j + 0.1) + i * bar_w
        y0 = to_y(height)
        draw.rectangle([(x0, y0), (x0 + bar_w - 1, bottom)], fill=COLORS[i % len(COLORS)])
        draw.text((x0 + bar_w / 2, y0 - 2), text, fill="black", font=font, anchor="mb")
    for j, name in enumerate(FREQ_NAMES):
        draw.text((left + group_w * (j + 0.5), bottom + 6), name, fill="black", font=font, anchor="mt")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text((SIZE[0] / 2, 12), "LVIS AP by category frequency", fill="black", font=font, anchor="mt")
    draw.text((4, (top + bottom) / 2), "AP %", fill="black", font=font, anchor="lm")
    for i, label in enumerate(labels):  # legend, top left: the rare-category bars are usually lowest
        y = top + 4 + 14 * i
        draw.rectangle([(left + 8, y), (left + 18, y + 9)], fill=COLORS[i % len(COLORS)])
        draw.text((left + 23, y + 5), label, fill="black", font=font, anchor="lm")
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
