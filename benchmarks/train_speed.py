"""Training speed of the lvisctl model core against plain torchvision Mask R-CNN.

Both models get the same random batch (default: 2 images of 320 px, 3 instances each), the same ResNet-50
FPN with trainable BatchNorm (torchvision's setting without pretrained weights) and no resizing
(torchvision's transform has its resize step disabled; the core never resizes). Each model runs in its
own spawned process for the peak memory (CUDA: max allocated; CPU: the process's max RSS, two steps),
then both are timed in one process with their steps interleaved, so the load of a shared machine hits
them alike (it/s from the median step time).

    .venv/bin/python benchmarks/train_speed.py            # CPU, a few minutes
    .venv/bin/python benchmarks/train_speed.py --device cuda --iters 50

Target: the core within 5% of torchvision's iterations per second. The data-pipeline rows are added by
the data layer (``ROWS``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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


def build_core(num_classes: int):
    import numpy as np

    from lvisctl.config import load_config
    from lvisctl.data.categories import CategoryMap, CategoryStats
    from lvisctl.modeling.build import build_model

    stats = CategoryStats(
        CategoryMap(range(1, num_classes + 1)),
        tuple(str(i) for i in range(num_classes)),
        np.full(num_classes, 10),
        np.full(num_classes, 20),
        ("f",) * num_classes,
        100,
    )
    cfg = load_config(
        None, ["model.backbone.name=resnet50", "model.backbone.norm=bn", "model.backbone.freeze_at=0"]
    )
    return build_model(cfg, stats)


def build_torchvision(num_classes: int):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    model.transform.resize = lambda image, target=None: (image, target)  # resizing disabled, as the core
    return model


MODELS: dict[str, Callable] = {
    "lvisctl core (r50-FPN)": build_core,
    "torchvision maskrcnn_resnet50_fpn": build_torchvision,
}


def _setup(name: str, args: argparse.Namespace):
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = MODELS[name](args.classes).to(device).train()
    images, targets = random_batch(args.batch, args.size, args.instances, args.classes)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step() -> float:
        start = time.perf_counter()
        losses = model(images, targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def _peak_memory(name: str, args: argparse.Namespace) -> float:
    """Runs in a fresh process: two training steps; peak CUDA allocation or the process's max RSS (MiB)."""
    import torch

    step = _setup(name, args)
    step()
    step()
    if args.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _timings(args: argparse.Namespace) -> dict[str, list[float]]:
    """All models in one process, steps interleaved, so a shared machine's load hits them alike."""
    steps = {name: _setup(name, args) for name in MODELS}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(args.iters):
        for name, step in steps.items():
            times[name].append(step())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=4)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    ctx = mp.get_context("spawn")
    memory = {}
    for name in MODELS:
        with ctx.Pool(1) as pool:
            memory[name] = pool.apply(_peak_memory, (name, args))
    times = _timings(args)
    rows = [
        {"name": n, "it_s": 1 / statistics.median(t), "mean_s": statistics.mean(t), "peak_mb": memory[n]}
        for n, t in times.items()
    ]
    base = rows[-1]["it_s"]
    mem = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    table = Table(
        title=f"Training speed: {args.batch} x {args.size} px, {args.classes} classes, {args.device}, "
        f"{args.iters} iters after {args.warmup} warm-up"
    )
    for col in ("model", "it/s (median)", "mean s/it", "vs torchvision", mem):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in rows:
        table.add_row(
            row["name"],
            f"{row['it_s']:.3f}",
            f"{row['mean_s']:.2f}",
            f"{row['it_s'] / base:.1%}",
            f"{row['peak_mb']:.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
