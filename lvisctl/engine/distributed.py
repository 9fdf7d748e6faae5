"""Multi-process training with ``torchrun`` (DDP): process-group set-up and the few collectives we need.

``torchrun --nproc_per_node N -m lvisctl train ...`` (or ``--nnodes``/``--rdzv-*`` for several nodes) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them training runs
in one process. NCCL on CUDA, gloo on CPU. Rank 0 alone writes files and the manifest.

Every collective waits at most ``runtime.dist_timeout_min`` minutes (NCCL's own default, 10, is shorter
than one rank's share of a paper-TTA chunk on a big model). Python objects travel over a gloo group
(host memory) even under NCCL, so a gather of detections never stages gigabytes on the GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

# torchrun workers import this module before torch: keep OpenMP threads from busy-waiting there too
# (``import lvisctl`` already does this; workers started with ``python -c`` may skip the package import).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from lvisctl.errors import LvisctlError  # noqa: E402

DEFAULT_TIMEOUT_MIN = 120.0  # configs/_base_/runtime.yaml runtime.dist_timeout_min


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the process's GPU when CUDA is present, else CPU; ``cuda`` without a GPU is an error.

    The GPU is ``local_rank`` modulo the visible devices: a launcher that gives each process its own
    single GPU (SLURM ``--gpus-per-task=1``, ``CUDA_VISIBLE_DEVICES`` per rank) shows it as ``cuda:0``.
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise LvisctlError(f"config: device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LvisctlError("config: device is 'cuda' but no CUDA GPU is available (use device=auto or cpu)")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def init_distributed(device_preference: str = "auto", timeout_min: float = DEFAULT_TIMEOUT_MIN) -> DistInfo:
    """Join the process group when launched by torchrun (env vars present); a no-op otherwise.

    ``timeout_min`` bounds every collective (a barrier where ranks finish their shares at different
    times included); it must exceed the longest stretch one rank works alone.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=float(timeout_min))
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def set_cudnn_benchmark(cfg: Any, device: torch.device, *, training: bool) -> bool:
    """Apply ``runtime.cudnn_benchmark`` and return the value set (False off CUDA).

    ``auto``: off in training, where multi-scale resizing and varying RoI counts give a new input shape
    almost every step (cudnn would re-tune each one: 1000+ shapes for 400-1400 px scales), on for
    inference, where a few padded sizes per scale repeat over thousands of images. ``train.deterministic``
    forces it off in training (the tuned algorithm may differ between runs).
    """
    if device.type != "cuda":
        return False
    policy = str(((cfg.get("runtime") or {}) if cfg is not None else {}).get("cudnn_benchmark", "auto"))
    deterministic = training and bool(
        ((cfg.get("train") or {}) if cfg is not None else {}).get("deterministic")
    )
    on = not deterministic and (policy == "always" or (policy == "auto" and not training))
    torch.backends.cudnn.benchmark = on
    return on


def set_deterministic(enabled: bool, device: torch.device) -> None:
    """``train.deterministic``: a nondeterministic op raises (not warns), on the GPU too.

    On CUDA cuBLAS needs a fixed workspace to give the same sums (``CUBLAS_WORKSPACE_CONFIG``, read when
    cuBLAS starts: set before the model reaches the GPU). docs/gpu.md lists what stays nondeterministic.
    """
    if not enabled:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)


def timeout_of(cfg: Any) -> float:
    """``runtime.dist_timeout_min`` of a config (the default for configs saved before the key existed)."""
    runtime = cfg.get("runtime", {}) if cfg is not None else {}
    return float((runtime or {}).get("dist_timeout_min", DEFAULT_TIMEOUT_MIN))


def cleanup_distributed() -> None:
    global _OBJECT_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OBJECT_GROUP = None


_OBJECT_GROUP: Any = None  # the gloo group for Python objects under NCCL (made once, like detectron2's)


def _object_group() -> Any:
    """The whole world on gloo: pickled objects stay in host memory (NCCL would stage them on the GPU)."""
    global _OBJECT_GROUP
    if dist.get_backend() != "nccl":
        return dist.group.WORLD
    if _OBJECT_GROUP is None:
        _OBJECT_GROUP = dist.new_group(backend="gloo")
    return _OBJECT_GROUP


def gather_to_main(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` on rank 0 (in rank order), ``[]`` elsewhere; ``[obj]`` in one process.

    As detectron2's ``comm.gather``: only rank 0 holds everything, over gloo, so an evaluation gather
    costs neither GPU memory nor a full copy of all ranks' records on every rank.
    """
    if not info.distributed:
        return [obj]
    group = _object_group()
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0, group=group)
    return out if out is not None else []


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over processes (for logging: every rank sees the same numbers)."""
    if not info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is true on any process, so all ranks take the same branch (e.g. stop on NaN)."""
    return agree_flags(None, flag, info)[1]


def agree_flags(local_bad: torch.Tensor | None, flag: bool, info: DistInfo) -> tuple[bool, bool]:
    """(``local_bad`` on any rank, ``flag`` on any rank) in one all-reduce and one host sync.

    ``local_bad`` is a 0-d bool tensor that stays on the device until the single ``tolist`` (a per-step
    check costs one sync, not one per question); None counts as false.
    """
    if not info.distributed:
        return (bool(local_bad) if local_bad is not None else False), flag
    device = info.device
    bad = local_bad.reshape(()).to(device, torch.float32) if local_bad is not None else None
    bad = bad if bad is not None else torch.zeros((), device=device)
    flags = torch.stack([bad, torch.full((), float(flag), device=device)])
    dist.all_reduce(flags)
    any_bad, any_flag = (flags > 0).tolist()
    return bool(any_bad), bool(any_flag)


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank (e.g. the checkpoint path chosen for a resume)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP does this at the start of each forward, so after the last step each rank still holds the
    statistics of its own last batch; this makes the final models identical on all ranks.
    """
    if not info.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)
