"""Dataset statistics: the category-frequency long tail and the mask/box area-ratio distribution.

The paper's thesis is that the mask/box area ratio matters: instances with a large box but a thin mask
(ratio < 0.25, the threshold of its Eq. 1) lose detail on coarse FPN levels and unbalance the mask loss.
The ratio is the annotation's ``area`` over its box area ``w * h``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lvisctl.data.lvis import FREQUENCIES, LvisData
from lvisctl.rundir.io import atomic_output

RATIO_BINS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
THIN_RATIO = 0.25  # Eq. 1 of the paper: S_mask / (0.25 * S_bbox)


@dataclass
class DatasetStats:
    """Per-category counts (in category-id order) and per-annotation mask/box ratios with their tag."""

    name: str
    num_images: int
    cat_ids: np.ndarray
    cat_names: list[str]
    frequency: list[str]  # the r/c/f tag of each category record
    image_count: np.ndarray  # images of this file containing the category
    instance_count: np.ndarray
    ratios: np.ndarray  # mask area / box area per annotation
    ratio_freq: np.ndarray  # r/c/f of each annotation's category

    def group_table(self) -> list[tuple[str, int, int, int]]:
        """(tag, categories, images-with-category sum, instances) per r/c/f group."""
        tags = np.array(self.frequency)
        return [
            (
                t,
                int((tags == t).sum()),
                int(self.image_count[tags == t].sum()),
                int(self.instance_count[tags == t].sum()),
            )
            for t in FREQUENCIES
        ]

    def ratio_histogram(self, tag: str | None = None) -> np.ndarray:
        """Annotation counts per ``RATIO_BINS`` bin (ratios above 1 from rounding fall in the last bin)."""
        ratios = self.ratios if tag is None else self.ratios[self.ratio_freq == tag]
        return np.histogram(np.clip(ratios, 0, 1), bins=RATIO_BINS)[0]


def dataset_stats(data: LvisData) -> DatasetStats:
    """Count from the file's annotations (not the records' ``image_count``, which a subset would break)."""
    cat_ids = np.array(sorted(data.categories), dtype=np.int64)
    index = {int(c): i for i, c in enumerate(cat_ids)}
    images = np.zeros(len(cat_ids), dtype=np.int64)
    instances = np.zeros(len(cat_ids), dtype=np.int64)
    ratios, tags = [], []
    for anns in data.anns_by_image.values():
        present = set()
        for ann in anns:
            k = index[ann["category_id"]]
            instances[k] += 1
            present.add(k)
            w, h = ann["bbox"][2], ann["bbox"][3]
            ratios.append(float(ann["area"]) / (w * h) if w * h > 0 else 0.0)
            tags.append(data.categories[ann["category_id"]].get("frequency", "?"))
        for k in present:
            images[k] += 1
    return DatasetStats(
        name=data.path.name,
        num_images=len(data.images),
        cat_ids=cat_ids,
        cat_names=[str(data.categories[int(c)].get("name", c)) for c in cat_ids],
        frequency=[str(data.categories[int(c)].get("frequency", "?")) for c in cat_ids],
        image_count=images,
        instance_count=instances,
        ratios=np.asarray(ratios, dtype=np.float64),
        ratio_freq=np.asarray(tags, dtype="<U1"),
    )


def stats_tables(stats: DatasetStats) -> list:
    """Rich tables: r/c/f groups, the mask/box ratio histogram (all and per group), the longest tail."""
    from rich.markup import escape  # a file name is user text, never markup ("res[val].json")
    from rich.table import Table

    groups = Table(title=f"{escape(stats.name)}: categories by frequency ({stats.num_images} images)")
    for col in ("group", "categories", "category-images", "instances", "instances / category"):
        groups.add_column(col, justify="right")
    for tag, n_cat, n_img, n_inst in stats.group_table():
        groups.add_row(tag, str(n_cat), str(n_img), str(n_inst), f"{n_inst / n_cat:.1f}" if n_cat else "-")

    ratio = Table(title=f"{escape(stats.name)}: mask/box area ratio ({len(stats.ratios)} annotations)")
    ratio.add_column("ratio", justify="right")
    for col in ("all", *FREQUENCIES):
        ratio.add_column(col, justify="right")
    hists = [stats.ratio_histogram(None)] + [stats.ratio_histogram(t) for t in FREQUENCIES]
    for b in range(len(RATIO_BINS) - 1):
        label = f"{RATIO_BINS[b]:.2f}-{RATIO_BINS[b + 1]:.2f}"
        ratio.add_row(label, *[f"{h[b]} ({100 * h[b] / max(h.sum(), 1):.0f}%)" for h in hists])
    thin = float((stats.ratios < THIN_RATIO).mean()) if len(stats.ratios) else 0.0
    ratio.caption = f"{100 * thin:.1f}% of annotations below {THIN_RATIO} (thin: large box, small mask)"
    return [groups, ratio]


def save_plots(stats: DatasetStats, out_dir: Path, *, prefix: str = "") -> list[Path]:
    """Write ``category_frequency.png`` (the long tail) and ``mask_box_ratio.png``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"r": "tab:red", "c": "tab:orange", "f": "tab:blue"}
    paths = []
    order = np.argsort(-stats.image_count, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(
        np.arange(len(order)),
        stats.image_count[order],
        color=[colors.get(stats.frequency[i], "gray") for i in order],
        width=1.0,
    )
    ax.set_yscale("symlog")
    ax.set_xlabel("category (sorted by images)")
    ax.set_ylabel("images containing the category")
    ax.set_title(f"{stats.name}: long tail (red r, orange c, blue f)")
    paths.append(_save(fig, out_dir / f"{prefix}category_frequency.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(0, 1, 41)
    for tag in FREQUENCIES:
        sel = np.clip(stats.ratios[stats.ratio_freq == tag], 0, 1)
        ax.hist(
            sel, bins=bins, histtype="step", label=f"{tag} ({len(sel)})", color=colors[tag], linewidth=1.5
        )
    ax.axvline(THIN_RATIO, color="black", linestyle="--", label=f"{THIN_RATIO} (Eq. 1)")
    ax.set_xlabel("mask area / box area")
    ax.set_ylabel("annotations")
    ax.set_title(f"{stats.name}: mask/box area ratio")
    ax.legend()
    paths.append(_save(fig, out_dir / f"{prefix}mask_box_ratio.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
