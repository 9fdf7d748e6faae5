"""Evaluation figures (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lvisctl.rundir.io import atomic_output

FREQ_KEYS = ("APr", "APc", "APf")


def plot_ap_by_frequency(metrics: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Grouped bars of AP on rare / common / frequent categories, one group per iou type (or extra metric).

    ``metrics`` maps a label (e.g. ``"segm"``) to its summary dict; -1 (no such categories) plots as 0
    and is labelled ``n/a``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(metrics)
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for i, label in enumerate(labels):
        values = [float(metrics[label].get(k, -1.0)) for k in FREQ_KEYS]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(FREQ_KEYS))]
        bars = ax.bar(xs, [100 * max(v, 0.0) for v in values], width, label=label)
        for bar, v in zip(bars, values, strict=True):
            text = "n/a" if v < 0 else f"{100 * v:.1f}"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(FREQ_KEYS)), ["rare", "common", "frequent"])
    ax.set_ylabel("AP (%)")
    ax.set_title("LVIS AP by category frequency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
