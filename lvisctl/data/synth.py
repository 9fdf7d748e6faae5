"""Synthetic LVIS: images and LVIS v1 json files that exercise what makes LVIS hard.

Each category has a fixed, learnable appearance (a shape family x a colour, plus a texture when there
are more categories than pairs). The training split has a long tail: category image counts are planned
per tier and then tagged r/c/f from the counts actually generated, with this rule:

* from 1,000 training images up, LVIS's own thresholds: r = 1-10 training images, c = 11-100, f > 100
  (LVIS counts out of ~100k images; at demo scale the same absolute counts still give a long tail);
* below 1,000 images both thresholds shrink by N/1000 (at least r <= 1 and c <= 2), so a tiny test set
  keeps all three groups (48 images: r = 1 image, c = 2-5, f > 5).
With the full real 1,203-category table (``val-scale``) the table's own r/c/f tags and image counts are
used, since no 100k-image training set is generated.

Federated labels as in LVIS: each image lists verified-absent ``neg_category_ids`` and
``not_exhaustive_category_ids`` (one instance of such a category is drawn but deliberately left
unannotated); some images also contain an unannotated object of an unverified category. Thin categories
(rotated sticks, rings, arcs, L-shapes, diagonal lines) have mask/box area ratios well below 0.25, the
case the paper's mask-level assignment and balanced mask loss target. Later objects occlude earlier ones;
an occluded object's annotation is its visible region, traced along pixel edges so the polygon
rasterises (pycocotools) to exactly the painted pixels (``val-scale`` turns occlusion off for speed).
Polygon vertices sit on a quarter-pixel grid so rasterising a crop equals rasterising the whole image.
Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lvisctl.errors import LvisctlError
from lvisctl.rundir import RunDir
from lvisctl.rundir.io import atomic_write_json, read_json, write_error
from lvisctl.rundir.leftovers import remove_stale_partials

# the real LVIS v1 category table ships inside the package (package data, see setup.py)
REAL_CATEGORIES_FILE = Path(__file__).resolve().parent / "lvis_v1_categories.json"
LVIS_TRAIN_IMAGES = 100_170  # images in LVIS v1 train, the denominator of the real table's counts
SYNTH_MARKER = ".lvisctl-synth.json"  # lists what data synth wrote (what --overwrite may remove)
SPLITS = (  # name, image folder, json file, annotated
    ("train", "train2017", "lvis_v1_train.json", True),
    ("val", "val2017", "lvis_v1_val.json", True),
    ("test_info", "test2017", "lvis_v1_image_info_test_dev.json", False),
    ("unlabeled", "unlabeled2017", "lvis_v1_image_info_unlabeled.json", False),
)
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SynthConfig:
    """One preset; every field can be overridden from ``generate_synthetic_lvis``."""

    num_categories: int
    train_images: int
    val_images: int
    test_images: int
    unlabeled_images: int
    image_size: int | None  # square side in px; None = LVIS-like sizes (640x480, 480x640, ...)
    max_objects: int  # per image, annotated or not
    solid_size: tuple[float, float]  # object extent in px: min, max as a fraction of the image side
    thin_size: tuple[float, float]
    min_eval_images: int  # per category in val/test/unlabeled, so rare categories are evaluated
    real_categories: bool = False
    write_images: bool = True
    not_exhaustive_prob: float = 0.15  # of (image, category) pairs with >= 2 instances
    unverified_prob: float = 0.1  # of images that get an unannotated object of an unlisted category
    max_neg: int = 8
    occlusion: bool = True  # False: objects never overlap (faster: no visible-region tracing)
    more_instances: tuple[float, float, float] = (0.5, 0.3, 0.2)  # f, c, r: chance of one more instance
    # Thin shapes' stroke width is at least this fraction of the object's extent (0: the default strokes).
    # The hm preset uses it so that a thin object stays several cells wide on the 28 x 28 mask grid.
    min_stroke: float = 0.0


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(8, 48, 16, 8, 8, 64, 4, (10, 0.35), (18, 0.55), 1),
    "demo": SynthConfig(30, 1200, 200, 50, 200, 128, 6, (14, 0.38), (28, 0.5), 2),
    "val-scale": SynthConfig(
        1203,
        2000,
        19_809,
        500,
        500,
        None,
        40,
        (12, 0.3),
        (30, 0.45),
        1,
        real_categories=True,
        write_images=False,
        occlusion=False,  # ~250k objects: json-only speed matters more than occlusion here
        more_instances=(0.7, 0.5, 0.3),  # ~12 annotations per image, as in LVIS val
    ),
    # Where the paper's HM techniques can matter: 320 px images whose thin objects have boxes of 100-290 px
    # (the FPN box rule pools them from P3/P4, Eq. 1 from P2) and strokes >= 10% of their extent
    # (several cells of the 28 x 28 mask grid); mask/box ratios span ~0.1 (sticks, L's) to ~0.9 (squares).
    "hm": SynthConfig(30, 1200, 200, 50, 100, 320, 5, (28, 0.5), (100, 0.9), 2, min_stroke=0.1),
}

# Shape families, interleaved so even 8 categories include thin ones.
SHAPES = (
    "disc",
    "stick",
    "square",
    "ring",
    "triangle",
    "l_shape",
    "star",
    "arc",
    "hexagon",
    "diagonal_line",
    "cross",
    "half_disc",
    "ellipse",
)
THIN_SHAPES = frozenset({"stick", "ring", "arc", "l_shape", "diagonal_line"})
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "magenta": (215, 50, 200),
    "cyan": (40, 205, 215),
    "orange": (245, 140, 30),
    "purple": (115, 45, 170),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
TEXTURES = ("solid", "striped", "dotted")


@dataclass
class _Category:
    record: dict
    shape: str
    color: str
    texture: str
    tier: str  # planned r/c/f
    table_count: int = 0  # image_count in the real table (table mode only)


@dataclass
class _Object:
    cat: int  # index into the category list
    annotated: bool
    polys: list[np.ndarray]  # rounded image coordinates, each (n, 2)
    x0: int
    y0: int
    full: np.ndarray  # bool crop of the whole shape
    vis: np.ndarray = field(init=False)  # bool crop of what later objects leave visible

    def __post_init__(self) -> None:
        self.vis = self.full.copy()

    @property
    def box(self) -> tuple[int, int, int, int]:
        h, w = self.full.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h


# ---------------------------------------------------------------------------------------- r/c/f rule
def frequency_thresholds(num_train_images: int) -> tuple[int, int]:
    """(rare_max, common_max) training-image counts; LVIS's (10, 100) from 1,000 images up."""
    scale = min(1.0, num_train_images / 1000)
    rare_max = max(1, round(10 * scale))
    return rare_max, max(rare_max + 1, round(100 * scale))


def frequency_tag(image_count: int, thresholds: tuple[int, int]) -> str:
    rare_max, common_max = thresholds
    return "r" if image_count <= rare_max else "c" if image_count <= common_max else "f"


# ---------------------------------------------------------------------------------------- categories
def _appearances(n: int) -> list[tuple[str, str, str]]:
    """Distinct (shape, colour, texture) triples: all shapes first, colours shifted per round."""
    names = list(COLORS)
    out = []
    for texture in TEXTURES:
        for k in range(len(names)):
            out.extend((s, names[(i + k) % len(names)], texture) for i, s in enumerate(SHAPES))
    return [out[i % len(out)] for i in range(n)]  # beyond 390 categories appearances repeat


def _tiers(num: int, rng: np.random.Generator) -> list[str]:
    n_f = max(1, round(0.2 * num))
    n_r = max(1, round(0.33 * num))
    tiers = ["f"] * n_f + ["r"] * n_r + ["c"] * max(0, num - n_f - n_r)
    return [str(t) for t in rng.permutation(tiers[:num])]


def load_category_table(path: str | Path | None = None) -> list[dict]:
    """The real LVIS v1 category table (id, name, synset, frequency, image_count)."""
    path = Path(path) if path is not None else REAL_CATEGORIES_FILE
    if not path.is_file():
        raise LvisctlError(f"{path}: LVIS category table not found (pass its path explicitly)")
    table = read_json(path)
    if not isinstance(table, list) or not all(
        isinstance(c, dict) and {"id", "name"} <= c.keys() for c in table
    ):
        raise LvisctlError(f"{path}: expected a list of category records with id and name")
    return table


def _make_categories(cfg: SynthConfig, rng: np.random.Generator, table: list[dict] | None) -> list[_Category]:
    looks = _appearances(cfg.num_categories)
    if table is not None and cfg.num_categories == len(table):
        chosen, tiers = sorted(table, key=lambda c: c["id"]), [str(c.get("frequency", "c")) for c in table]
    else:
        tiers = _tiers(cfg.num_categories, rng)
        chosen = _pick_real(table, tiers, rng) if table is not None else [None] * cfg.num_categories
    cats = []
    for i, (real, tier, (shape, color, texture)) in enumerate(zip(chosen, tiers, looks, strict=True)):
        look = f"{color} {shape.replace('_', ' ')}" + ("" if texture == "solid" else f", {texture}")
        if real is None:
            name = f"{color}_{shape}" + ("" if texture == "solid" else f"_{texture}")
            record = {"id": i + 1, "name": name, "synset": f"{name}.n.01"}
        else:
            synset = real.get("synset", f"{real['name']}.n.01")
            record = {"id": int(real["id"]), "name": real["name"], "synset": synset}
        record["synonyms"] = [record["name"]]
        record["def"] = f"synthetic category drawn as a {look}"
        cats.append(_Category(record, shape, color, texture, tier))
    return cats


def _pick_real(table: list[dict], tiers: list[str], rng: np.random.Generator) -> list[dict]:
    """Real categories whose LVIS tag matches each planned tier (ids stay sparse, as in LVIS)."""
    pools = {t: [c for c in table if c.get("frequency") == t] for t in "rcf"}
    picked: dict[str, list[dict]] = {}
    for t in "rcf":
        need = tiers.count(t)
        if need > len(pools[t]):
            raise LvisctlError(f"category table: only {len(pools[t])} '{t}' categories, {need} requested")
        picked[t] = [pools[t][j] for j in rng.choice(len(pools[t]), size=need, replace=False)]
    return [picked[t].pop() for t in tiers]


# ---------------------------------------------------------------------------------------- planning
def _train_counts(cfg: SynthConfig, cats: list[_Category], rng: np.random.Generator) -> np.ndarray:
    """Training images per category: log-uniform inside each tier's range of the r/c/f rule."""
    n = cfg.train_images
    rare_max, common_max = frequency_thresholds(n)
    ranges = {
        "r": (max(1, math.ceil(0.4 * rare_max)), rare_max),
        "c": (rare_max + 1, common_max),
        "f": (common_max + 1, max(common_max + 1, round(0.35 * n))),
    }
    counts = []
    for c in cats:
        lo, hi = ranges[c.tier]
        counts.append(min(hi, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))
    return np.clip(np.array(counts), 0, n)


def _eval_counts(train_counts: np.ndarray, n_train: int, n_images: int, minimum: int) -> np.ndarray:
    """Images per category in an evaluation split: the train share, at least ``minimum`` (rare included)."""
    scaled = np.round(train_counts * n_images / max(n_train, 1)).astype(int)
    return np.clip(np.maximum(scaled, minimum), 0, n_images)


def _assign(counts: np.ndarray, n_images: int, rng: np.random.Generator) -> list[list[int]]:
    """Exactly ``counts[c]`` distinct images per category, spread to the least-loaded images."""
    load = np.zeros(n_images)
    per_image: list[list[int]] = [[] for _ in range(n_images)]
    for c in np.argsort(-counts, kind="stable"):
        if counts[c] <= 0:
            continue
        order = np.lexsort((rng.random(n_images), load))[: counts[c]]
        load[order] += 1
        for i in order:
            per_image[i].append(int(c))
    frequent = [int(c) for c in np.argsort(-counts, kind="stable")[:3]]
    for i, cats in enumerate(per_image):  # every image shows something: top up with a frequent category
        if not cats and n_images:
            cats.append(frequent[i % len(frequent)])
    return per_image


# ---------------------------------------------------------------------------------------- shapes
def _circle(r: float, n: int = 24, start: float = 0.0, stop: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=stop - start < 2 * math.pi - 1e-9)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _rect(length: float, width: float) -> np.ndarray:
    a, b = length / 2, width / 2
    return np.array([[-a, -b], [a, -b], [a, b], [-a, b]])


def _annulus(r: float, t: float, start: float, stop: float, n: int = 14) -> np.ndarray:
    return np.concatenate([_circle(r, n, start, stop), _circle(r - t, n, start, stop)[::-1]])


def _shape_polys(
    shape: str, s: float, rng: np.random.Generator, min_stroke: float = 0.0
) -> tuple[list[np.ndarray], bool]:
    """Polygons centred on 0 for a shape of extent ``s``; the flag says whether to rotate randomly.

    Thin shapes' strokes are at least ``min_stroke * s`` wide.
    """
    r = s / 2
    floor = min_stroke * s
    thin_w = max(2.0, 0.09 * s, floor)
    if shape == "disc":
        return [_circle(r)], False
    if shape == "square":
        return [_rect(0.8 * s, 0.8 * s)], True
    if shape == "triangle":
        return [_circle(r, 3)], True
    if shape == "hexagon":
        return [_circle(r, 6)], True
    if shape == "star":
        t = np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [np.stack([rad * np.sin(t), -rad * np.cos(t)], 1)], True
    if shape == "cross":
        a, b = r, r / 3
        quarter = np.array([(-b, -a), (b, -a), (b, -b)])
        return [np.concatenate([_rotate(quarter, 90 * k) for k in range(4)])], True
    if shape == "half_disc":
        return [_circle(r, 16, 0, math.pi)], True
    if shape == "ellipse":
        return [_circle(r, 24) * np.array([1.0, 0.5])], True
    if shape == "stick":  # a rotated bar: large box, small mask
        angle = rng.uniform(25, 65) * rng.choice([1, -1])
        return [_rotate(_rect(s, thin_w), angle)], False
    if shape == "diagonal_line":
        angle = rng.uniform(35, 55) * rng.choice([1, -1])
        return [_rotate(_rect(1.15 * s, max(2.0, floor)), angle)], False
    if shape == "ring":  # two half annuli: COCO polygons cannot have holes
        t = max(1.5, 0.1 * r, floor)
        return [_annulus(r, t, 0, math.pi), _annulus(r, t, math.pi, 2 * math.pi)], False
    if shape == "arc":
        return [_annulus(r, max(1.5, 0.12 * r, floor), 0, math.pi)], True
    if shape == "l_shape":
        w = thin_w
        pts = [(0, 0), (w, 0), (w, s - w), (s, s - w), (s, s), (0, s)]
        return [np.array(pts, dtype=float) - s / 2], True
    raise ValueError(f"unknown shape {shape}")


def _rotate(poly: np.ndarray, degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return poly @ rot.T


# ---------------------------------------------------------------------------------------- raster
def _rasterize(polys: list[np.ndarray], x0: int, y0: int, h: int, w: int) -> np.ndarray:
    """pycocotools rasterisation (what evaluation sees) of ``polys`` into the crop at (x0, y0)."""
    from pycocotools import mask as mask_utils

    flat = [(p - [x0, y0]).ravel().astype(np.float64) for p in polys]
    rle = mask_utils.merge(mask_utils.frPyObjects(flat, h, w))
    return mask_utils.decode(rle).astype(bool)


def trace_loops(mask: np.ndarray) -> list[np.ndarray]:
    """Boundary loops of a binary mask along pixel edges (vertices at pixel corners, (x, y)).

    Outer boundaries run clockwise on screen (positive shoelace area), holes the other way. At a corner
    where two pixels touch diagonally the walk turns right, so diagonal pixels are separate pieces
    (4-connectivity) and every loop is a simple polygon.
    """
    m = np.pad(mask.astype(bool), 1)
    fg = m[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # (neighbour offset, start corner offset, direction) for top, right, bottom and left edges
    sides = (
        ((-1, 0), (0, 0), (1, 0)),
        ((0, 1), (1, 0), (0, 1)),
        ((1, 0), (1, 1), (-1, 0)),
        ((0, -1), (0, 1), (0, -1)),
    )
    for (dr, dc), (sx, sy), d in sides:
        nb = m[1 + dr : m.shape[0] - 1 + dr, 1 + dc : m.shape[1] - 1 + dc]
        for r, c in zip(*np.nonzero(fg & ~nb), strict=True):
            edges.setdefault((int(c) + sx, int(r) + sy), []).append(d)
    loops = []
    while edges:
        start = next(iter(edges))
        v, d = start, edges[start][0]
        pts: list[tuple[int, int]] = []
        while True:
            outs = edges[v]
            outs.remove(d)
            if not outs:
                del edges[v]
            if not pts or pts[-1] != v:
                pts.append(v)
            v = (v[0] + d[0], v[1] + d[1])
            if v not in edges:
                break
            right, left = (-d[1], d[0]), (d[1], -d[0])
            d = next(o for o in (right, d, left) if o in edges[v])
        loops.append(_drop_collinear(np.array(pts, dtype=np.float64)))
    return loops


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    prev, nxt = np.roll(pts, 1, 0), np.roll(pts, -1, 0)
    d_in, d_out = pts - prev, nxt - pts
    return pts[d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] != 0]


def loop_area(loop: np.ndarray) -> float:
    """Signed shoelace area: positive for outer boundaries, negative for holes."""
    x, y = loop[:, 0], loop[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def _visible_ok(obj: _Object, min_visible: float) -> bool:
    """An occluded object must keep most of itself, in pieces big enough to see, with no holes."""
    area = obj.vis.sum()
    if area < min_visible * obj.full.sum():
        return False
    if area == obj.full.sum():
        return True
    areas = [loop_area(lp) for lp in trace_loops(obj.vis)]
    return min(areas) >= 6


# ---------------------------------------------------------------------------------------- one image
def _image_size(cfg: SynthConfig, rng: np.random.Generator) -> tuple[int, int]:
    if cfg.image_size is not None:
        return cfg.image_size, cfg.image_size
    sizes = ((480, 640), (640, 480), (427, 640), (375, 500), (640, 427))
    return sizes[rng.integers(len(sizes))]


def _place(
    cat: int, shape: str, cfg: SynthConfig, h: int, w: int, placed: list[_Object], rng: np.random.Generator
) -> _Object | None:
    """Sample a pose and position; accept it if every object it covers stays valid. None after 40 tries."""
    lo, hi_frac = cfg.thin_size if shape in THIN_SHAPES else cfg.solid_size
    side = min(h, w)
    for attempt in range(40):
        hi = max(lo, hi_frac * side) * (0.97**attempt)  # shrink a little when space is tight
        s = math.exp(rng.uniform(math.log(min(lo, hi)), math.log(hi)))
        polys, rotate = _shape_polys(shape, s, rng, cfg.min_stroke)
        if rotate:
            angle = rng.uniform(0, 360)
            polys = [_rotate(p, angle) for p in polys]
        pts = np.concatenate(polys)
        span = pts.max(0) - pts.min(0)
        if span[0] > w - 2 or span[1] > h - 2:
            continue
        offset = np.array([rng.uniform(1, w - 1 - span[0]), rng.uniform(1, h - 1 - span[1])]) - pts.min(0)
        # quarter-pixel coordinates: exact in binary, so the integer crop shift below cannot change
        # pycocotools' rounding (2-decimal coordinates did, by one pixel now and then)
        polys = [np.round((p + offset) * 4) / 4 for p in polys]
        pts = np.concatenate(polys)
        x0, y0 = int(max(0, math.floor(pts[:, 0].min()))), int(max(0, math.floor(pts[:, 1].min())))
        x1, y1 = int(min(w, math.ceil(pts[:, 0].max()) + 1)), int(min(h, math.ceil(pts[:, 1].max()) + 1))
        if not cfg.occlusion and any(_overlap((x0, y0, x1, y1), o.box) for o in placed):
            continue  # cheap box test before rasterising
        full = _rasterize(polys, x0, y0, y1 - y0, x1 - x0)
        if full.sum() < 4:
            continue
        obj = _Object(cat, True, polys, x0, y0, full)
        if not cfg.occlusion or _occlude(obj, placed):
            return obj
    return None


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return max(a[0], b[0]) < min(a[2], b[2]) and max(a[1], b[1]) < min(a[3], b[3])


def _occlude(new: _Object, placed: list[_Object], min_visible: float = 0.55) -> bool:
    """Cover earlier objects with ``new``; keep the change only if all of them stay valid."""
    saved = []
    nx0, ny0, nx1, ny1 = new.box
    for obj in placed:
        ox0, oy0, ox1, oy1 = obj.box
        ix0, iy0, ix1, iy1 = max(nx0, ox0), max(ny0, oy0), min(nx1, ox1), min(ny1, oy1)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        cover = new.full[iy0 - ny0 : iy1 - ny0, ix0 - nx0 : ix1 - nx0]
        region = obj.vis[iy0 - oy0 : iy1 - oy0, ix0 - ox0 : ix1 - ox0]
        if not (region & cover).any():
            continue
        saved.append((obj, obj.vis.copy()))
        region &= ~cover
        if not _visible_ok(obj, min_visible):
            for o, vis in saved:
                o.vis = vis
            return False
    return True


def _plan_objects(
    cats_here: list[int], cats: list[_Category], cfg: SynthConfig, rng: np.random.Generator
) -> tuple[list[tuple[int, bool]], set[int]]:
    """(category, annotated) per instance, and the not-exhaustive categories of the image."""
    p_more = dict(zip("fcr", cfg.more_instances, strict=True))
    budget = cfg.max_objects - len(cats_here)
    objs, not_exhaustive = [], set()
    for c in cats_here:
        extra = 0
        while budget > 0 and rng.random() < p_more[cats[c].tier]:
            extra, budget = extra + 1, budget - 1
        n = 1 + extra
        skip = n >= 2 and rng.random() < cfg.not_exhaustive_prob
        if skip:
            not_exhaustive.add(c)
        objs.extend((c, not (skip and k == n - 1)) for k in range(n))
    return objs, not_exhaustive


def _make_image(
    cats_here: list[int], cats: list[_Category], cfg: SynthConfig, rng: np.random.Generator
) -> tuple[int, int, list[_Object], set[int], set[int]]:
    """Objects of one image (back to front) with its not-exhaustive and negative category sets."""
    h, w = _image_size(cfg, rng)
    plan, not_exhaustive = _plan_objects(cats_here, cats, cfg, rng)
    present = set(cats_here)
    absent = [c for c in range(len(cats)) if c not in present]
    if absent and len(plan) < cfg.max_objects and rng.random() < cfg.unverified_prob:
        extra = absent.pop(int(rng.integers(len(absent))))  # drawn, unlabelled and not listed anywhere
        plan.append((extra, False))
    order = rng.permutation(len(plan))
    placed: list[_Object] = []
    for i in order:
        c, annotated = plan[i]
        obj = _place(c, cats[c].shape, cfg, h, w, placed, rng)
        if obj is not None:
            obj.annotated = annotated
            placed.append(obj)
    n_neg = min(len(absent), int(rng.integers(1, cfg.max_neg + 1)))
    neg = {absent[j] for j in rng.choice(len(absent), size=n_neg, replace=False)} if n_neg else set()
    annotated_cats = {o.cat for o in placed if o.annotated}
    return h, w, placed, not_exhaustive & annotated_cats, neg


def _annotation(obj: _Object) -> dict:
    """LVIS annotation fields of an object's visible region (exact: polygons rasterise to ``vis``)."""
    if np.array_equal(obj.vis, obj.full):
        polys = obj.polys
    else:
        polys = [lp + [obj.x0, obj.y0] for lp in trace_loops(obj.vis)]
    ys, xs = np.nonzero(obj.vis)
    x, y = int(xs.min()), int(ys.min())
    bbox = [obj.x0 + x, obj.y0 + y, int(xs.max()) - x + 1, int(ys.max()) - y + 1]
    seg = [[round(float(v), 2) for v in p.ravel()] for p in polys]
    return {"segmentation": seg, "area": int(obj.vis.sum()), "bbox": [float(v) for v in bbox]}


# ---------------------------------------------------------------------------------------- painting
def _paint(
    h: int, w: int, objs: list[_Object], cats: list[_Category], rng: np.random.Generator
) -> np.ndarray:
    """Mildly textured background, then each object's colour on its full mask, back to front."""
    from PIL import Image

    base = rng.uniform(95, 165) + rng.uniform(-15, 15, size=3)
    coarse = rng.normal(0, 14, size=(5, 5, 3))
    blobs = np.stack(
        [
            np.asarray(Image.fromarray(coarse[..., k].astype(np.float32)).resize((w, h), Image.BILINEAR))
            for k in range(3)
        ],
        -1,
    )
    img = base + blobs + rng.normal(0, 3, size=(h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    for obj in objs:
        cat = cats[obj.cat]
        color = np.array(COLORS[cat.color], dtype=float) + rng.uniform(-12, 12, size=3)
        ch, cw = obj.full.shape
        patch = img[obj.y0 : obj.y0 + ch, obj.x0 : obj.x0 + cw]
        ly, lx = yy[:ch, :cw] + obj.y0, xx[:ch, :cw] + obj.x0
        fill = np.broadcast_to(color, patch.shape).copy()
        if cat.texture == "striped":
            fill[((lx + ly) // 3) % 2 == 1] *= 0.55
        elif cat.texture == "dotted":
            fill[(lx % 4 < 2) & (ly % 4 < 2)] *= 0.55
        patch[obj.full] = fill[obj.full]
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- splits
@dataclass
class _SplitResult:
    images: list[dict]
    annotations: list[dict]


def _image_record(image_id: int, folder: str, h: int, w: int, rng: np.random.Generator) -> dict:
    name = f"{image_id:012d}.jpg"
    day = int(rng.integers(1, 29))
    return {
        "id": image_id,
        "width": w,
        "height": h,
        "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
        "flickr_url": f"http://farm1.staticflickr.com/synthetic/{name}",
        "license": int(rng.integers(1, 7)),
        "date_captured": f"2013-11-{day:02d} 12:00:00",
    }


@dataclass(frozen=True)
class _Generation:
    """What every split of one dataset is drawn with."""

    cats: list[_Category]
    cfg: SynthConfig
    seed: int
    tmp_root: Path
    progress: ProgressFn | None


def _generate_split(
    gen: _Generation, split_idx: int, per_image: list[list[int]], first_id: int, ann_id: list[int]
) -> _SplitResult:
    from PIL import Image

    cats, cfg, seed, tmp_root, progress = gen.cats, gen.cfg, gen.seed, gen.tmp_root, gen.progress
    name, folder, _, annotated = SPLITS[split_idx]
    if cfg.write_images:
        (tmp_root / folder).mkdir(parents=True, exist_ok=True)
    result = _SplitResult([], [])
    for i, cats_here in enumerate(per_image):
        rng = np.random.default_rng([seed, split_idx, i])
        h, w, objs, not_exhaustive, neg = _make_image(cats_here, cats, cfg, rng)
        record = _image_record(first_id + i, folder, h, w, rng)
        if annotated:
            record["neg_category_ids"] = sorted(cats[c].record["id"] for c in neg)
            record["not_exhaustive_category_ids"] = sorted(cats[c].record["id"] for c in not_exhaustive)
            for obj in objs:
                if obj.annotated:
                    cat_id = cats[obj.cat].record["id"]
                    ann = {"id": ann_id[0], "image_id": record["id"], "category_id": cat_id}
                    result.annotations.append({**ann, **_annotation(obj)})
                    ann_id[0] += 1
        result.images.append(record)
        if cfg.write_images:
            pixels = _paint(h, w, objs, cats, rng)
            Image.fromarray(pixels).save(tmp_root / folder / f"{record['id']:012d}.jpg", quality=95)
        if progress is not None:
            progress(name, i + 1, len(per_image))
    return result


def _category_records(
    cats: list[_Category], train: _SplitResult, table_mode: bool, n_train: int
) -> list[dict]:
    """LVIS category records; counts (and r/c/f, unless from the real table) from the training split."""
    idx = {c.record["id"]: k for k, c in enumerate(cats)}
    images = np.zeros(len(cats), dtype=int)
    instances = np.zeros(len(cats), dtype=int)
    seen: set[tuple[int, int]] = set()
    for ann in train.annotations:
        k = idx[ann["category_id"]]
        instances[k] += 1
        if (ann["image_id"], k) not in seen:
            seen.add((ann["image_id"], k))
            images[k] += 1
    thresholds = frequency_thresholds(n_train)
    out = []
    for k, c in enumerate(cats):
        rec = dict(c.record)
        if table_mode:  # the real tags and image counts; instances estimated at the synthetic rate
            rate = instances[k] / images[k] if images[k] else 1.5
            rec["frequency"], rec["image_count"] = c.tier, c.table_count
            rec["instance_count"] = max(c.table_count, round(c.table_count * rate))
        else:
            rec["frequency"] = frequency_tag(int(images[k]), thresholds)
            rec["image_count"], rec["instance_count"] = int(images[k]), int(instances[k])
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------- entry point
def resolve_config(preset: str = "demo", **overrides: object) -> SynthConfig:
    """The preset with non-None overrides applied and checked."""
    if preset not in PRESETS:
        raise LvisctlError(f"--preset {preset}: unknown preset; choose one of {', '.join(PRESETS)}")
    cfg = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    for key in ("num_categories", "train_images", "val_images"):
        if int(getattr(cfg, key)) < 1:
            raise LvisctlError(f"--{key.replace('_', '-')} {getattr(cfg, key)}: must be at least 1")
    for key in ("test_images", "unlabeled_images"):
        if int(getattr(cfg, key)) < 0:
            raise LvisctlError(f"--{key.replace('_', '-')} {getattr(cfg, key)}: must be >= 0")
    if cfg.image_size is not None and cfg.image_size < 32:
        raise LvisctlError(f"--image-size {cfg.image_size}: must be at least 32 px")
    if not cfg.real_categories and cfg.num_categories > 3 * len(SHAPES) * len(COLORS):
        raise LvisctlError(f"--num-categories {cfg.num_categories}: at most 390 without --real-categories")
    return cfg


def generate_synthetic_lvis(
    out_dir: str | Path | None = None,
    *,
    run: RunDir | None = None,
    preset: str = "demo",
    seed: int = 0,
    overwrite: bool = False,
    categories_file: str | Path | None = None,
    progress: ProgressFn | None = None,
    **overrides: object,
) -> dict[str, Path]:
    """Write a synthetic LVIS v1 dataset to ``out_dir``; returns the written paths by split (+ ``root``).

    ``overrides`` are :class:`SynthConfig` fields (``num_categories``, ``train_images``, ``image_size``,
    ``write_images``, ``real_categories``, ...). The dataset is built in a hidden sibling folder and
    renamed into place at the end, so an interrupted run never leaves a complete-looking dataset.
    With a run directory ``run`` (``lvisctl data synth``), ``out_dir`` defaults to ``RUN/data`` and the four
    jsons are registered as ``dataset`` artifacts (meta ``split``).
    """
    if out_dir is None and run is None:
        raise LvisctlError("data synth: pass --out DIR or --run-dir DIR")
    cfg = resolve_config(preset, **overrides)  # fail fast on bad options, before any work
    given = Path(out_dir) if out_dir is not None else run.root / "data"
    existed = given.exists()
    out = given.expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise LvisctlError(f"{out}: already exists and is not empty; pass --overwrite to replace it")
        check_replaceable(out)
    table = load_category_table(categories_file) if cfg.real_categories or categories_file else None
    if table is not None and cfg.num_categories > len(table):
        raise LvisctlError(f"--num-categories {cfg.num_categories}: the category table has only {len(table)}")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    remove_stale_partials(out)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_dataset(tmp, cfg, seed, table, progress, preset)
        _write_marker(tmp, preset, seed)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except OSError as err:  # a full disk or read-only folder (PIL, json): one line, nothing left
        raise (write_error(out, err) or err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    paths = {"root": out, **{name: out / fname for name, _, fname, _ in SPLITS}}
    if run is not None:
        meta = {"preset": preset, "seed": seed, "synthetic": True, "images": cfg.write_images}
        try:
            for name, *_ in SPLITS:
                run.register("dataset", paths[name], meta={"split": name, **meta})
        except BaseException:  # a run dir that cannot record it (read-only): no unrecorded dataset left
            if not existed:
                shutil.rmtree(given, ignore_errors=True)
            raise
    return paths


def _write_marker(folder: Path, preset: str, seed: int) -> None:
    """Record every file this command wrote, so ``--overwrite`` can later prove the folder is ours."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    marker = {"written_by": "lvisctl data synth", "preset": preset, "seed": seed, "files": files}
    atomic_write_json(folder / SYNTH_MARKER, marker, indent=None)


def check_replaceable(out: Path) -> None:
    """``--overwrite`` replaces only a dataset folder ``data synth`` wrote, holding nothing else.

    The folder must carry the marker this command writes, and every file in it must be one the marker
    lists: a folder of the user's (notes, a real COCO tree, a run directory, ``--out .``) is refused
    with one line, whatever it holds.
    """
    if not out.is_dir():
        raise LvisctlError(f"{out}: is a file; --overwrite only replaces a dataset folder made by data synth")
    marker = out / SYNTH_MARKER
    try:
        listed = set(json.loads(marker.read_bytes())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise LvisctlError(
            f"{out}: not a dataset folder written by 'lvisctl data synth' (no valid {SYNTH_MARKER}); "
            "--overwrite only replaces those: choose another --out or empty the folder yourself"
        ) from None
    extra = [
        p.relative_to(out).as_posix()
        for p in sorted(out.rglob("*"))
        if p != marker and (not p.is_dir() or p.is_symlink()) and p.relative_to(out).as_posix() not in listed
    ]
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise LvisctlError(
            f"{out}: holds files 'lvisctl data synth' did not write ({shown}); --overwrite would delete "
            "them, so it refuses: move them away or choose another --out"
        )


def _write_dataset(
    tmp: Path, cfg: SynthConfig, seed: int, table: list[dict] | None, progress: ProgressFn | None, preset: str
) -> None:
    rng = np.random.default_rng([seed, 1000])
    cats = _make_categories(cfg, rng, table)
    table_mode = table is not None and cfg.num_categories == len(table)
    if table_mode:
        for c, real in zip(cats, sorted(table, key=lambda r: r["id"]), strict=True):
            c.table_count = int(real.get("image_count", 1))
    train_counts = _plan_train(cfg, cats, rng, table_mode)
    sizes = (cfg.train_images, cfg.val_images, cfg.test_images, cfg.unlabeled_images)
    results: list[_SplitResult] = []
    ann_id, first_id = [1], 1
    gen = _Generation(cats, cfg, seed, tmp, progress)
    for k, n in enumerate(sizes):
        if k == 0:
            counts = train_counts
        elif table_mode:  # LVIS's own per-category shares, at least min_eval_images
            counts = _eval_counts(
                np.array([c.table_count for c in cats]), LVIS_TRAIN_IMAGES, n, cfg.min_eval_images
            )
        else:
            counts = _eval_counts(train_counts, cfg.train_images, n, cfg.min_eval_images)
        per_image = _assign(np.asarray(counts, dtype=int), n, rng)
        results.append(_generate_split(gen, k, per_image, first_id, ann_id))
        first_id += n
    categories = _category_records(cats, results[0], table_mode, cfg.train_images)
    # jsons last: a dataset folder with all four files is complete
    for (name, _, fname, annotated), res in zip(SPLITS, results, strict=True):
        data = {"info": _info(preset, seed, cfg, name), "licenses": _LICENSES, "images": res.images}
        if annotated:
            data["annotations"] = res.annotations
        data["categories"] = categories
        atomic_write_json(tmp / fname, data, indent=None)


def _plan_train(
    cfg: SynthConfig, cats: list[_Category], rng: np.random.Generator, table_mode: bool
) -> np.ndarray:
    if table_mode:
        share = cfg.train_images / LVIS_TRAIN_IMAGES
        return np.array([round(c.table_count * share) for c in cats], dtype=int)
    return _train_counts(cfg, cats, rng)


def _info(preset: str, seed: int, cfg: SynthConfig, split: str) -> dict:
    rare_max, common_max = frequency_thresholds(cfg.train_images)
    return {
        "description": f"lvisctl synthetic LVIS v1 ({split}; preset {preset}, seed {seed})",
        "url": "https://www.lvisdataset.org",
        "version": "1.0",
        "year": 2020,
        "contributor": "lvisctl data synth",
        "date_created": "2020-01-01 00:00:00",
        "frequency_rule": f"r <= {rare_max} training images, c {rare_max + 1}-{common_max}, f > {common_max}",
    }


_LICENSES = [
    {"id": i, "name": name, "url": f"http://creativecommons.org/licenses/{slug}/2.0/"}
    for i, (name, slug) in enumerate(
        [
            ("Attribution-NonCommercial-ShareAlike License", "by-nc-sa"),
            ("Attribution-NonCommercial License", "by-nc"),
            ("Attribution-NonCommercial-NoDerivs License", "by-nc-nd"),
            ("Attribution License", "by"),
            ("Attribution-ShareAlike License", "by-sa"),
            ("Attribution-NoDerivs License", "by-nd"),
        ],
        start=1,
    )
]
