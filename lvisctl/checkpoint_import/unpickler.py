"""The restricted unpickler of foreign checkpoints: resolves only data constructors (tensor and storage
rebuilds mapped to our own code, numpy arrays, ``OrderedDict``, a few builtin containers); every other
class becomes a :class:`Skipped` record that is never called. Used by the zip / pickle reader
(:mod:`lvisctl.checkpoint_import.reader`) and the legacy-format reader
(:mod:`lvisctl.checkpoint_import.legacy`).
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}
_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex, "tuple": tuple}


@dataclass
class Skipped:
    """Stand-in for an object of a class the reader does not trust: only its name is kept."""

    name: str
    args: tuple = ()
    state: Any = None

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: record, never apply
        self.state = None


class _StorageRef:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _skipped_class(name: str, seen: list[str]) -> type:
    def make(*args: Any, **_kwargs: Any) -> Skipped:
        if name not in seen:
            seen.append(name)
        return Skipped(name, ())

    # a class so that pickle's NEWOBJ (cls.__new__(cls, *args)) also works; __new__ returns a Skipped
    return type("SkippedClass", (), {"__new__": lambda _cls, *a, **k: make(*a, **k)})


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_rest: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor without storage")
    check_tensor_extent(storage.numel(), int(offset), tuple(size), tuple(stride))
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


def check_tensor_extent(storage_numel: int, offset: int, size: tuple, stride: tuple) -> None:
    """A tensor must lie inside its storage and hold no more elements than it: a stride-0 view of one
    float declared 20000 x 20000 would be cloned into 1.6 GB (checked before anything is allocated)."""
    if len(size) != len(stride) or min((*size, *stride, offset), default=0) < 0:
        raise pickle.UnpicklingError(f"tensor of size {size} and stride {stride}: not a valid layout")
    numel = math.prod(size)
    if numel == 0:
        return
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
    if last >= storage_numel or numel > storage_numel:
        raise pickle.UnpicklingError(
            f"tensor of size {list(size)} needs {numel} elements but its storage holds {storage_numel}"
        )


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only data constructors; everything else becomes a :class:`Skipped` record."""

    def __init__(self, file: io.BufferedIOBase, records: Any = None, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.records = records
        self.skipped: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if module == "_codecs" and name == "encode":  # protocol-2 pickles spell bytes as encode(str, latin1)
            return codecs.encode
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageRef(_STORAGE_DTYPES[name])
        if module == "torch" and name == "device":
            return lambda *a: str(a[0]) if a else "cpu"
        return _skipped_class(f"{module}.{name}", self.skipped)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.60}")
        storage_type, key = pid[1], str(pid[2])
        dtype = storage_type.dtype if isinstance(storage_type, _StorageRef) else torch.uint8
        if self.records is None:
            raise pickle.UnpicklingError(f"storage record {key} missing")
        declared = pid[4] if len(pid) > 4 and isinstance(pid[4], int) else None
        data = self.records.read(key, dtype, declared)
        return torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
