"""Host syncs per training step and per inference image, counted on the CPU.

On a GPU every value the host reads from a device tensor waits for the queue to drain (a "sync"):
``item``/``bool``/``int``/``float`` of a tensor, ``tolist``, a data-dependent output size (``nonzero``,
``unique``, boolean-mask indexing, ``masked_select``, ``repeat_interleave`` without ``output_size``) and
torchvision's NMS (it copies its keep-mask to the host). ``SyncCounter`` counts those calls while the
code runs on the CPU (a ``TorchDispatchMode`` for the ops, a ``TorchFunctionMode`` for ``tolist`` /
``numpy``), so the counts can be measured and kept down without a GPU; ``torch.cuda.set_sync_debug_mode``
confirms them on one (``benchmarks/gpu_check.sh``).

    python benchmarks/sync_count.py            # one table: syncs per step / per image, by model

Counts depend on the data (GT and RoI counts), not on timing: the rows use fixed seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {
    "aten._local_scalar_dense.default",  # item(), bool(), int(), float() of a tensor
    "aten.nonzero.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
    "aten.masked_select.default",
    "aten.repeat_interleave.Tensor",
    "aten.repeat_interleave.self_Tensor",
    "torchvision.nms.default",
}


def _bool_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices or [])


class _Ops(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = str(func)
        if name in SYNC_OPS or (name.startswith("aten.index.Tensor") and _bool_index(args)):
            if not (name.startswith("aten.repeat_interleave") and (kwargs or {}).get("output_size")):
                self.counts[name] += 1
        return func(*args, **(kwargs or {}))


class _Reads(TorchFunctionMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in (torch.Tensor.tolist, torch.Tensor.numpy):
            self.counts[func.__name__] += 1
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """``with SyncCounter() as c: ...``; ``c.total`` host syncs, ``c.counts`` by op."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def __enter__(self) -> SyncCounter:
        self._modes = [_Reads(self.counts), _Ops(self.counts)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ------------------------------------------------------------------------------------------ the rows
ROWS = {
    "softmax": [],
    "sigmoid": ["model.roi_heads.cls_loss=sigmoid"],
    "eql": ["model.roi_heads.cls_loss=eql"],
    "bags": ["model.roi_heads.cls_loss=bags"],
    "mask scoring": ["model.mask_head.mask_iou=true"],
    "htc": ["model.roi_heads.type=htc"],
}


def _config(extra: list[str]) -> Any:
    from lvisctl.config import load_config

    base = [
        "device=cpu",
        "model.backbone.name=tiny",
        "model.backbone.tiny_width=8",
        "model.fpn.out_channels=16",
        "model.roi_heads.fc_dim=32",
        "model.mask_head.conv_dim=16",
        "model.mask_head.num_convs=1",
    ]
    return load_config("demo/stage1", base + extra)  # the packaged config of the lvisctl imported


def _batch(num_classes: int, gts: int, size: int, seed: int) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(2):
        xy = torch.rand((gts, 2), generator=g) * size * 0.7
        wh = 8 + torch.rand((gts, 2), generator=g) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        masks = torch.zeros((gts, size, size), dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        labels = torch.randint(1, num_classes + 1, (gts,), generator=g)
        images.append(torch.rand((3, size, size), generator=g))
        targets.append({"boxes": boxes, "labels": labels, "masks": masks, "image_id": 0})
    return images, targets


def _stats(num_classes: int) -> Any:
    from lvisctl.data.categories import CategoryStats

    counts = [max(1, 400 // (i + 1)) for i in range(num_classes)]  # long-tailed: r, c and f classes
    return CategoryStats.from_dict(
        {
            "cat_ids": list(range(1, num_classes + 1)),
            "names": [f"c{i}" for i in range(num_classes)],
            "image_count": counts,
            "instance_count": counts,
            "frequency": ["f" if c > 100 else "c" if c > 10 else "r" for c in counts],
            "num_images": 400,
        }
    )


def count_row(
    extra: list[str], *, gts: int = 20, size: int = 128, classes: int = 40, gpu: bool = True
) -> dict[str, int]:
    """Syncs of one training step (forward + loss, 2 images) and of inference on one image; ``gpu``:
    along the paths CUDA takes."""
    from lvisctl.modeling.build import build_model

    torch.manual_seed(0)
    model = build_model(_config(extra), _stats(classes))
    gpu_paths(model, gpu)
    images, targets = _batch(classes, gts, size, seed=1)
    model.train()
    with SyncCounter() as train_count:
        losses = model(images, targets)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), SyncCounter() as test_count:
        model(images[:1], paste_masks=False)  # as the Predictor calls it (masks pasted per record later)
    return {"step": train_count.total, "image": test_count.total}


def gpu_paths(model: torch.nn.Module, enabled: bool = True) -> None:
    """Make the CPU take the code paths CUDA takes (``sync_free``: postprocess NMS, BAGS sampling)."""
    for module in model.modules():
        post = getattr(module, "post", None)
        for part in (module, post):
            if part is not None and hasattr(part, "sync_free"):
                part.sync_free = True if enabled else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gts", type=int, default=20, help="GT instances per image")
    parser.add_argument("--cpu-paths", action="store_true", help="count the CPU's host-side paths instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    note = f"(CPU count, {args.gts} GT/image, 2 images/step)"
    print(f"{'model':<14}{'syncs/step':>12}{'syncs/image':>13}   {note}")
    for name, extra in ROWS.items():
        row = count_row(extra, gts=args.gts, gpu=not args.cpu_paths)
        print(f"{name:<14}{row['step']:>12}{row['image']:>13}")


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH first (compare two trees)
    main()
