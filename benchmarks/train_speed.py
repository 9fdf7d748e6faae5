"""Training speed: what each stage-1 technique costs, against plain torchvision Mask R-CNN.

Four sections, one rich table (each row relative to its section's baseline row):

* models: one random batch (default 2 images of 320 px, 3 instances each, 80 long-tailed classes), the
  same ResNet-50 FPN with trainable BatchNorm (torchvision's setting without pretrained weights) and no
  resizing (torchvision's resize step disabled; the core never resizes). Rows: torchvision
  ``maskrcnn_resnet50_fpn`` (baseline), the core with softmax CE (like-for-like; target >= 95%), core +
  EQL, the HTC RoI heads (``model.roi_heads.type=htc``, Table 1's "+ HTC"), and for reference the
  stage-2 switches BAGS, HM and MS, all with every weight trainable (stage 2
  itself freezes the backbone, so its iterations are cheaper). Peak memory comes from a spawned process
  per model (CUDA: max allocated; CPU: the process's max RSS, torch's own ~0.4 GB included, two steps);
  it/s from the median step time with all models' steps interleaved in one process, so the load of a
  shared machine hits them alike. fp32 throughout (the trainer uses AMP on CUDA).
* data: samples/s of the real ``LvisTrainDataset`` (single process) on a synthetic LVIS (``demo`` preset
  at ``--size`` px, ``--data-images`` training images): no augmentation (baseline), then cumulatively +
  scale jitter and h-flip, + rotation (boxes from masks), + Mosaic with RFS-weighted partners,
  + InstaBoost 0.5; the
  probabilities are the config defaults, the scales are ``--size`` +-12.5% (as the demo config around its
  128 px) and the Mosaic canvas is 1.25 x ``--size``. Configs interleaved, median of ``--rounds`` passes.
* sampler: building one epoch's index list at LVIS v1 train scale (100,170 images, the synthetic set's
  repeat factors tiled): plain shuffle (baseline) vs RFS (stochastic rounding + shuffle), and computing the
  RFS repeat factors r(I) from the images' label sets (once per run).
* workers (opt-in, ``--only workers``): one data worker at LVIS size (1024 px JPEGs, stage-1 augmentation
  defaults), samples/s, and how many workers keep an r50-FPN GPU step (0.3-0.5 s / 2 images) fed.
* e2e: what training actually runs at: the core with the synthetic set's categories, the real
  ``build_train_data`` dataset + sampler and a ``DataLoader`` as the trainer builds it; baseline = core,
  plain sampler, no augmentation, 0 workers; then core + EQL + RFS + full augmentation with 0 and 2
  workers. Rows run one after another (their workers would otherwise run during the other rows' steps);
  the first iterations (``--warmup``, worker start-up included) are not timed.

    .venv/bin/python benchmarks/train_speed.py                     # CPU, a few minutes
    .venv/bin/python benchmarks/train_speed.py --only models,e2e --device cuda --iters 50
    .venv/bin/python benchmarks/train_speed.py --only eql,hm --size 512
    .venv/bin/python benchmarks/train_speed.py --only workers --samples 16   # data workers per GPU

``--only`` takes row keys and section names (comma-separated or repeated); a section's baseline row is
always included.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# r50-FPN with trainable BN from scratch: torchvision's maskrcnn_resnet50_fpn(weights=None) setting.
R50_TRAINABLE = ["model.backbone.name=resnet50", "model.backbone.norm=bn", "model.backbone.freeze_at=0"]
HM = [  # Table 2's "HM" switches (configs/stage2/gs_hm.yaml without the GS part)
    "model.mask_head.level_assign=eq1",
    "model.mask_head.loss=balanced",
    "model.mask_head.boundary=true",
    "model.mask_head.num_convs=7",
    "model.roi_heads.roi_pool=deform",
]
EQL = ["model.roi_heads.cls_loss=eql"]
MODEL_ROWS: dict[str, tuple[str, list[str] | None]] = {  # key -> (label, core overrides; None = torchvision)
    "torchvision": ("torchvision maskrcnn_resnet50_fpn", None),
    "softmax": ("core + softmax CE (like-for-like)", []),
    "eql": ("core + EQL", EQL),
    "bags": ("core + BAGS (stage-2 switch)", ["model.roi_heads.cls_loss=bags"]),
    "hm": ("core + HM (stage-2 switch)", HM),
    "ms": ("core + MS: mask IoU head (stage-2 switch)", ["model.mask_head.mask_iou=true"]),
    "htc": (
        "core + HTC heads (3 stages, softmax CE; vs the like-for-like row)",
        ["model.roi_heads.type=htc"],
    ),
}
# key -> (label, augment overrides; None = no transforms at all)
DATA_ROWS: dict[str, tuple[str, list[str] | None]] = {
    "data-none": ("no augmentation", None),
    "data-jitter": ("+ scale jitter, h-flip 0.5", ["augment.mosaic.prob=0", "augment.rotate.prob=0"]),
    "data-rotate": ("+ rotation 0.5 (boxes from masks)", ["augment.mosaic.prob=0"]),
    "data-mosaic": ("+ Mosaic 0.5 (RFS-weighted)", []),
    "data-instaboost": ("+ InstaBoost 0.5 (Table 2's dagger rows)", ["augment.instaboost.prob=0.5"]),
}
SAMPLER_ROWS: dict[str, str] = {
    "sampler-plain": "plain sampler: one epoch's list",
    "sampler-rfs": "RFS sampler: one epoch's list",
    "sampler-factors": "RFS repeat factors r(I), once per run",
}
E2E_ROWS: dict[str, tuple[str, list[str], bool, int]] = {  # key -> (label, overrides, augment, workers)
    "e2e-base": ("core, plain sampler, no augmentation, 0 workers", ["sampler.type=uniform"], False, 0),
    "e2e-full0": ("core + EQL + RFS + full augmentation, 0 workers", EQL, True, 0),
    "e2e-full2": ("core + EQL + RFS + full augmentation, 2 workers", EQL, True, 2),
}
# The data loading a GPU waits for at LVIS size: one worker (the main process) decoding ~1 MP JPEGs (square
# LVIS_JPEG_SIDE px, the pixels of 1333x800) through the stage-1 augmentations at the base config's
# defaults (short side 640-800, long side <= 1333, Mosaic 0.5, rotation 0.5, flip). Opt-in (--only workers):
# it writes --lvis-images synthetic JPEGs first.
WORKER_ROWS: dict[str, str] = {
    "data-lvis": "LVIS size: 1024 px JPEG + stage-1 augment, 1 worker",
}
LVIS_JPEG_SIDE = 1024
# An r50-FPN step on a V100-class GPU: 0.3-0.5 s for 2 images (the figure): 4-6.7 samples/s.
GPU_SAMPLES_PER_S = (2 / 0.5, 2 / 0.3)
SECTIONS: dict[str, list[str]] = {
    "models": list(MODEL_ROWS),
    "data": list(DATA_ROWS),
    "sampler": list(SAMPLER_ROWS),
    "e2e": list(E2E_ROWS),
    "workers": list(WORKER_ROWS),
}
OPT_IN_SECTIONS = ("workers",)
LVIS_TRAIN_IMAGES = 100_170
RATE_UNITS = {"it": "it/s", "sample": "samples/s", "epoch": "epochs/s", "run": "runs/s"}


@dataclass
class Row:
    """One table row: ``seconds`` per ``unit`` (median), optional peak memory in MiB."""

    key: str
    section: str
    label: str
    seconds: float
    unit: str
    peak_mb: float | None = None

    @property
    def rate(self) -> float:
        return 1.0 / self.seconds if self.seconds > 0 else math.inf


# ------------------------------------------------------------------------------------------ row selection
def select_rows(only: Iterable[str]) -> list[str]:
    """Row keys for ``--only`` (keys or section names; empty = all), each section's baseline included."""
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    if not wanted:
        return [k for name, keys in SECTIONS.items() if name not in OPT_IN_SECTIONS for k in keys]
    known = {k for keys in SECTIONS.values() for k in keys}
    unknown = [w for w in wanted if w not in known and w not in SECTIONS]
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; sections: {list(SECTIONS)}, rows: {sorted(known)}")
    keys = set()
    for w in wanted:
        keys.update(SECTIONS.get(w, [w]))
    selected = []
    for keys_of_section in SECTIONS.values():
        if keys & set(keys_of_section):
            selected += [k for i, k in enumerate(keys_of_section) if i == 0 or k in keys]
    return selected


# ------------------------------------------------------------------------------------------ model section
def random_batch(batch: int, size: int, instances: int, num_classes: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        xy = torch.randint(0, size // 2, (instances, 2), generator=gen).float()
        wh = torch.randint(size // 8, size // 2, (instances, 2), generator=gen).float()
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(instances, size, size, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist(), strict=True):
            m[y1:y2, x1:x2] = 1
        labels = torch.randint(1, num_classes + 1, (instances,), generator=gen)
        images.append(torch.rand(3, size, size, generator=gen))
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def long_tail_stats(num_classes: int, num_images: int = LVIS_TRAIN_IMAGES):
    """LVIS-like class statistics: image counts falling geometrically from 5,000 to 1, 3 instances each.

    So EQL has a real tail (image count < lambda x num_images = 176) and BAGS fills all four of its bins
    (instance counts 15,000 down to 3), which a flat distribution would not.
    """
    import numpy as np

    from lvisctl.data.categories import CategoryMap, CategoryStats

    exponent = 1.0 - np.arange(num_classes) / max(num_classes - 1, 1)
    images = np.maximum(np.round(5000.0**exponent), 1).astype(np.int64)
    frequency = tuple("r" if n <= 10 else "c" if n <= 100 else "f" for n in images)
    names = tuple(f"class{i}" for i in range(1, num_classes + 1))
    return CategoryStats(
        CategoryMap(range(1, num_classes + 1)), names, images, 3 * images, frequency, num_images
    )


def build_core(num_classes: int, overrides: Sequence[str] = ()):
    from lvisctl.config import load_config
    from lvisctl.modeling.build import build_model

    return build_model(load_config(None, [*R50_TRAINABLE, *overrides]), long_tail_stats(num_classes))


def build_torchvision(num_classes: int):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    model.transform.resize = lambda image, target=None: (image, target)  # resizing disabled, as the core
    return model


def build_model_row(key: str, num_classes: int):
    overrides = MODEL_ROWS[key][1]
    return build_torchvision(num_classes) if overrides is None else build_core(num_classes, overrides)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_step_fn(model, device) -> Callable[[list, list], float]:
    """A plain SGD step (forward, backward, update) returning its wall time."""
    import torch

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step(images: list, targets: list) -> float:
        start = time.perf_counter()
        losses = model(images, targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - start

    return step


def _setup(key: str, args: argparse.Namespace) -> Callable[[], float]:
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model_row(key, args.classes).to(device).train()
    images, targets = random_batch(args.batch, args.size, args.instances, args.classes)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    step = _train_step_fn(model, device)
    return lambda: step(images, targets)


def _peak_memory(key: str, args: argparse.Namespace) -> float:
    """Runs in a fresh process: two training steps; peak CUDA allocation or the process's max RSS (MiB)."""
    import torch

    step = _setup(key, args)
    step()
    step()
    if args.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _interleaved(steps: dict[str, Callable[[], float]], warmup: int, iters: int) -> dict[str, list[float]]:
    """Run every step ``warmup`` untimed then ``iters`` timed rounds, interleaved; seconds per round."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(iters):
        for key, step in steps.items():
            times[key].append(step())
    return times


def model_rows(keys: Sequence[str], args: argparse.Namespace, *, memory: bool = True) -> list[Row]:
    """Model section: peak memory per model in a spawned process (if ``memory``), then interleaved timing."""
    peak: dict[str, float | None] = dict.fromkeys(keys)
    if memory:
        ctx = mp.get_context("spawn")
        for key in keys:
            with ctx.Pool(1) as pool:
                peak[key] = pool.apply(_peak_memory, (key, args))
    times = _interleaved({key: _setup(key, args) for key in keys}, args.warmup, args.iters)
    return [
        Row(key, "models", MODEL_ROWS[key][0], statistics.median(times[key]), "it", peak[key]) for key in keys
    ]


# ------------------------------------------------------------------------------------------ data section
def data_overrides(size: int) -> list[str]:
    """Augmentation scaled to ``size`` px images (the demo config's ratios around its 128 px)."""
    scales = [size * 7 // 8, size * 15 // 16, size, size * 17 // 16, size * 9 // 8]
    return [
        f"augment.train_scales={scales}",
        f"augment.max_size={2 * size}",
        f"augment.mosaic.size={size * 5 // 4}",
        "sampler.rfs_threshold=0.05",  # a few hundred images: t = 0.001 would repeat nothing (demo value)
    ]


def make_synthetic_lvis(root: str | Path, size: int, train_images: int):
    """A synthetic LVIS training split (``demo`` preset, ``size`` px, seed 0), loaded."""
    from lvisctl.data.lvis import load_lvis
    from lvisctl.data.synth import generate_synthetic_lvis

    paths = generate_synthetic_lvis(
        Path(root) / "synthetic-lvis",
        preset="demo",
        seed=0,
        image_size=size,
        train_images=train_images,
        val_images=1,
        test_images=0,
        unlabeled_images=0,
    )
    return load_lvis(paths["train"])


def build_data_row(key: str, lvis, size: int):
    """``LvisTrainDataset`` with the transforms of data row ``key`` (RFS factors weight Mosaic)."""
    from lvisctl.config import load_config
    from lvisctl.data.dataset import LvisTrainDataset
    from lvisctl.data.transforms import build_train_transforms

    aug = DATA_ROWS[key][1]
    cfg = load_config(None, [*data_overrides(size), *(aug or [])])
    dataset = LvisTrainDataset(lvis, lvis.category_stats().category_map, seed=0)
    if aug is not None:
        factors = dataset.repeat_factors(float(cfg.sampler.rfs_threshold))
        dataset.transforms = build_train_transforms(cfg, repeat_factors=factors)
    return dataset


def data_rows(keys: Sequence[str], lvis, args: argparse.Namespace) -> list[Row]:
    """Data section: ``--samples`` samples per pass, configs interleaved, median of ``--rounds`` passes."""
    datasets = {key: build_data_row(key, lvis, args.size) for key in keys}
    n = len(next(iter(datasets.values())))
    sample_keys = [(i % n, 0, i) for i in range(args.samples)]  # the same samples and seeds for every row

    def pass_over(dataset, keys_: list) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            for k in keys_:
                dataset[k]
            return time.perf_counter() - start

        return run

    for dataset in datasets.values():  # warm-up: first-call costs (imports, allocator)
        pass_over(dataset, sample_keys[:2])()
    times = _interleaved({k: pass_over(d, sample_keys) for k, d in datasets.items()}, 0, args.rounds)
    return [
        Row(key, "data", DATA_ROWS[key][0], statistics.median(times[key]) / args.samples, "sample")
        for key in keys
    ]


def sampler_rows(keys: Sequence[str], lvis, args: argparse.Namespace) -> list[Row]:
    """Sampler section at LVIS train scale: epoch index lists (plain vs RFS) and the repeat factors."""
    import numpy as np

    from lvisctl.data.samplers import PlainSampler, RepeatFactorSampler, image_frequency_from_sets
    from lvisctl.data.samplers import repeat_factors as rfs_factors

    dataset = build_data_row("data-none", lvis, args.size)
    t = 0.05
    sets = dataset.image_label_sets()
    reps = -(-LVIS_TRAIN_IMAGES // len(sets))
    lvis_sets = (sets * reps)[:LVIS_TRAIN_IMAGES]
    factors = np.resize(dataset.repeat_factors(t), LVIS_TRAIN_IMAGES)
    samplers = {
        "sampler-plain": PlainSampler(LVIS_TRAIN_IMAGES, seed=0),
        "sampler-rfs": RepeatFactorSampler(factors, seed=0),
    }
    epochs = itertools.count()

    def timed(fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        return run

    steps = {
        key: timed(lambda s=samplers[key]: s.epoch_indices(next(epochs)))  # a new epoch: never cached
        for key in keys
        if key in samplers
    }
    if "sampler-factors" in keys:
        steps["sampler-factors"] = timed(
            lambda: rfs_factors(lvis_sets, image_frequency_from_sets(lvis_sets), t)
        )
    times = _interleaved(steps, 1, args.rounds)
    unit = {"sampler-factors": "run"}
    return [
        Row(
            key,
            "sampler",
            f"{SAMPLER_ROWS[key]} ({LVIS_TRAIN_IMAGES:,} images)",
            statistics.median(times[key]),
            unit.get(key, "epoch"),
        )
        for key in keys
    ]


# ------------------------------------------------------------------------------------------ e2e section
def _to_device(target: dict, device) -> dict:
    import torch

    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in target.items()}


def e2e_row(key: str, lvis, args: argparse.Namespace) -> Row:
    """Iterations/s with the trainer's data path: ``build_train_data`` + a ``DataLoader`` + an SGD step."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader

    from lvisctl.config import load_config
    from lvisctl.data.dataset import build_train_data, collate_detection
    from lvisctl.modeling.build import build_model

    label, overrides, augment, workers = E2E_ROWS[key]
    cfg = load_config(None, [*R50_TRAINABLE, *data_overrides(args.size), *overrides])
    stats = lvis.category_stats()
    dataset, sampler = build_train_data(cfg, lvis, stats.category_map)
    if not augment:
        dataset.transforms = None
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg, stats).to(device).train()
    step = _train_step_fn(model, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def batches():
        for epoch in itertools.count():  # a small synthetic set may need more than one epoch
            sampler.set_epoch(epoch)
            yield from DataLoader(
                dataset,
                batch_sampler=BatchSampler(sampler, args.batch, drop_last=True),
                collate_fn=collate_detection,
                num_workers=workers,
                pin_memory=device.type == "cuda",
            )

    times = []
    stream = batches()
    last = time.perf_counter()
    try:
        for images, targets in itertools.islice(stream, args.warmup + args.iters):
            step(
                [im.to(device, non_blocking=True) for im in images], [_to_device(t, device) for t in targets]
            )
            now = time.perf_counter()
            times.append(now - last)  # data wait + step
            last = now
    finally:
        stream.close()  # stops the DataLoader's workers now, not at garbage collection
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return Row(key, "e2e", label, statistics.median(times[args.warmup :]), "it", peak)


def worker_row(key: str, args: argparse.Namespace) -> Row:
    """Samples/s of one data worker at LVIS size (median of ``--rounds`` passes over ``--samples``)."""
    from lvisctl.config import load_config
    from lvisctl.data.dataset import LvisTrainDataset
    from lvisctl.data.lvis import load_lvis
    from lvisctl.data.synth import generate_synthetic_lvis
    from lvisctl.data.transforms import build_train_transforms

    with tempfile.TemporaryDirectory(prefix="train-speed-lvis-") as tmp:
        paths = generate_synthetic_lvis(
            Path(tmp) / "lvis", preset="demo", seed=0, image_size=LVIS_JPEG_SIDE,
            train_images=args.lvis_images, val_images=1, test_images=0, unlabeled_images=0,
        )  # fmt: skip
        lvis = load_lvis(paths["train"])
        cfg = load_config(None, ["sampler.rfs_threshold=0.05"])  # base augmentation defaults
        dataset = LvisTrainDataset(lvis, lvis.category_stats().category_map, seed=0)
        factors = dataset.repeat_factors(float(cfg.sampler.rfs_threshold))
        dataset.transforms = build_train_transforms(cfg, repeat_factors=factors)
        n = len(dataset)
        dataset[(0, 0, 0)]  # warm-up
        times = []
        for r in range(args.rounds):
            start = time.perf_counter()
            for i in range(args.samples):
                dataset[(i % n, r, i)]
            times.append((time.perf_counter() - start) / args.samples)
    return Row(key, "workers", WORKER_ROWS[key], statistics.median(times), "sample")


def workers_line(rows: Sequence[Row]) -> str | None:
    """How many data workers keep one GPU busy, from the measured per-worker rate."""
    row = next((r for r in rows if r.key == "data-lvis"), None)
    if row is None:
        return None
    lo, hi = (math.ceil(need / row.rate) for need in GPU_SAMPLES_PER_S)
    need = f"{GPU_SAMPLES_PER_S[0]:.1f}-{GPU_SAMPLES_PER_S[1]:.1f}"
    return (
        f"one data worker: {row.rate:.2f} samples/s at LVIS size; an r50-FPN GPU step of 0.3-0.5 s for "
        f"2 images needs {need} samples/s: {lo if lo == hi else f'{lo}-{hi}'} workers per GPU "
        "(per core of this machine; cores shared by other processes give less)"
    )


# ------------------------------------------------------------------------------------------ table
def render(rows: Sequence[Row], args: argparse.Namespace):
    """The rich table: per section, rate, time per unit, relative to the section's first row, memory."""
    from rich.table import Table

    mem = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    table = Table(
        title=f"Training speed: batch {args.batch} x {args.size} px, {args.device}, {args.iters} iters after "
        f"{args.warmup} warm-up; data: {args.samples} samples x {args.rounds} rounds"
    )
    for col in ("section", "row", "rate", "time", "vs baseline", mem):
        table.add_column(col, justify="left" if col in ("section", "row") else "right")
    section = None
    for row in rows:
        if row.section != section:
            if section is not None:
                table.add_section()
            section, base = row.section, row
        table.add_row(
            row.section if row is base else "",
            row.label,
            f"{_number(row.rate)} {RATE_UNITS[row.unit]}",
            f"{_number(row.seconds * 1000)} ms/{row.unit}",
            "-" if row.key == "sampler-factors" else f"{row.rate / base.rate:.1%}",
            "-" if row.peak_mb is None else f"{row.peak_mb:,.0f}",
        )
    return table


def _number(x: float) -> str:
    """Three significant digits without exponents: 1,463 / 139 / 7.18 / 0.611."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def target_line(rows: Sequence[Row]) -> str | None:
    """The issue's target: the like-for-like core within 5% of torchvision's it/s."""
    by_key = {r.key: r for r in rows}
    if "softmax" not in by_key or "torchvision" not in by_key:
        return None
    ratio = by_key["softmax"].rate / by_key["torchvision"].rate
    verdict = "met" if ratio >= 0.95 else "NOT met"
    return f"core + softmax CE runs at {ratio:.1%} of torchvision's it/s (target >= 95%: {verdict})"


def run_benchmark(args: argparse.Namespace) -> list[Row]:
    """Every selected row, in section order."""
    keys = select_rows(args.only)
    rows = []
    models = [k for k in keys if k in MODEL_ROWS]
    if models:
        rows += model_rows(models, args, memory=not args.no_memory)
    rest = [k for k in keys if k not in MODEL_ROWS and k not in WORKER_ROWS]
    if rest:
        with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
            lvis = make_synthetic_lvis(tmp, args.size, args.data_images)
            if data := [k for k in rest if k in DATA_ROWS]:
                rows += data_rows(data, lvis, args)
            if sampler := [k for k in rest if k in SAMPLER_ROWS]:
                rows += sampler_rows(sampler, lvis, args)
            rows += [e2e_row(k, lvis, args) for k in rest if k in E2E_ROWS]
    rows += [worker_row(k, args) for k in keys if k in WORKER_ROWS]
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=f"sections and rows: {SECTIONS}"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument(
        "--size", type=int, default=320, help="image side in px (random batch and synthetic LVIS)"
    )
    parser.add_argument("--instances", type=int, default=3, help="instances per image of the random batch")
    parser.add_argument("--classes", type=int, default=80, help="classes of the model rows (long-tailed)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per model / e2e row")
    parser.add_argument("--iters", type=int, default=4, help="timed iterations per model / e2e row")
    parser.add_argument("--data-images", type=int, default=200, help="training images of the synthetic LVIS")
    parser.add_argument("--samples", type=int, default=32, help="samples per data-row pass")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per data / sampler row")
    parser.add_argument("--only", action="append", default=[], help="row keys or sections, comma-separated")
    parser.add_argument("--no-memory", action="store_true", help="skip the spawned peak-memory runs")
    parser.add_argument("--lvis-images", type=int, default=16, help="synthetic LVIS-size JPEGs (workers row)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    from rich.console import Console

    args = parse_args(argv)
    rows = run_benchmark(args)
    console = Console()
    if not console.is_terminal:  # piped or redirected: rich would wrap the labels at 80 columns
        console = Console(width=140)
    console.print(render(rows, args))
    if line := target_line(rows):
        console.print(line)
    if line := workers_line(rows):
        console.print(line)


if __name__ == "__main__":
    main()
