"""The model's training set-up: freezing (stage 2), the optimizer, the DDP wrapper."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lvisctl.engine.distributed import DistInfo
from lvisctl.errors import LvisctlError
from lvisctl.modeling.roi_keys import upgrade_key, upgrade_prefixes


def freeze_modules(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Freeze every parameter whose name starts with one of ``prefixes`` (stage 2: backbone, neck, RPN).

    Frozen = ``requires_grad=False`` (so also left out of the optimizer and DDP's gradient sync) and
    BatchNorm layers kept in eval mode (:func:`set_frozen_eval`) so their running statistics stay too.
    Prefixes of the flat RoI-head layout (``roi_heads.mask_head``) name the same modules as today's
    (``roi_heads.mask.head``; ``lvisctl.modeling.roi_keys``).
    """
    names = [n for n, _ in model.named_parameters()]
    unknown = [p for p in prefixes if not any(_under(n, upgrade_key(p)) for n in names)]
    if unknown:
        tops = sorted({n.split(".")[0] for n in names})
        raise LvisctlError(
            f"config: train.freeze names {unknown} that match no parameters (model has {tops})"
        )
    ours = upgrade_prefixes(prefixes)
    for name, param in model.named_parameters():
        if any(_under(name, p) for p in ours):
            param.requires_grad_(False)
    return list(prefixes)


def set_frozen_eval(model: nn.Module, prefixes: Sequence[str]) -> None:
    """Put the normalisation layers of frozen modules in eval mode (call after ``model.train()``)."""
    if not prefixes:
        return
    ours = upgrade_prefixes(prefixes)
    for name, module in model.named_modules():
        if any(_under(name, p) for p in ours) and isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def build_optimizer(model: nn.Module, solver: Mapping[str, Any] | Any) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters (the lr is set by the schedule every step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LvisctlError("config: train.freeze leaves no trainable parameters")
    return torch.optim.SGD(
        params,
        lr=float(_value(solver, "base_lr")),
        momentum=float(_value(solver, "momentum")),
        weight_decay=float(_value(solver, "weight_decay")),
    )


def _value(section: Mapping[str, Any] | Any, key: str) -> Any:
    # a plain mapping (tests) or a config section read by attribute
    return section[key] if isinstance(section, Mapping) else getattr(section, key)


def wrap_ddp(model: nn.Module, cfg: Any, info: DistInfo) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun (SyncBN with ``train.sync_bn``); else itself."""
    if not info.distributed:
        return model
    if cfg.train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=bool(cfg.train.find_unused_parameters)
    )
