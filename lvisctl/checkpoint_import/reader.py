"""Read a foreign checkpoint without executing any code from it.

* torch files (``.pth`` / ``.pt``, zip format): ``torch.load(..., weights_only=True)`` first. mmdet /
  mmengine checkpoints often carry objects in ``meta`` / ``message_hub`` that the weights-only loader
  refuses; those files are read again by :class:`RestrictedUnpickler` over the zip records, which
  rebuilds tensors itself and replaces every other class by a :class:`Skipped` record (never called).
* pickles (detectron2 ``.pkl``: ``{"model": {name: numpy array}}``): the same unpickler, accepting numpy
  arrays and plain containers.
* legacy (pre-1.6, non-zip) torch files: ``torch.load`` weights-only, else the same unpickler over
  their storages (:mod:`lvisctl.checkpoint_import.legacy`).

Only these are ever resolved: the tensor / storage rebuild functions (mapped to our own code), numpy's
array reconstruction, ``collections.OrderedDict`` and a few builtin containers.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvisctl.errors import LvisctlError, torch_load_problem

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


@dataclass
class LoadedFile:
    """What was read: the top-level object and the names of the classes that were skipped."""

    obj: Any
    kind: str  # "torch" | "torch-restricted" | "torch-legacy" | "pickle"
    skipped: list[str] = field(default_factory=list)


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

    def __init__(self, file: io.BufferedIOBase, records: _ZipRecords | None = None, **kwargs: Any):
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


# A record may be deflated (a re-zipped checkpoint; torch itself stores them uncompressed), but a large
# one that inflates more than this is a decompression bomb, not weights.
_MAX_INFLATION = 100
_BOMB_MIN_BYTES = 64 << 20


class _ZipRecords:
    """The storage records of a torch zip, read only when the pickle references one (an unreferenced
    1.5 GiB record is never inflated) and only after its declared size is checked against the record's."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str) -> None:
        self.zf, self.prefix = zf, prefix

    def read(self, key: str, dtype: torch.dtype, declared: int | None) -> bytearray:
        try:
            info = self.zf.getinfo(f"{self.prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage record {key} missing") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if declared is not None and declared * itemsize != info.file_size:
            raise pickle.UnpicklingError(
                f"storage {key} declares {declared} elements ({declared * itemsize} bytes) but its record "
                f"holds {info.file_size} bytes"
            )
        if info.file_size > _BOMB_MIN_BYTES and info.file_size > _MAX_INFLATION * max(info.compress_size, 1):
            raise pickle.UnpicklingError(
                f"storage record {key} inflates {info.compress_size} bytes to {info.file_size}: a "
                "decompression bomb, not weights"
            )
        return bytearray(self.zf.read(info))


def _read_restricted_zip(path: Path) -> tuple[Any, list[str]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise pickle.UnpicklingError("no data.pkl in the zip")
        records = _ZipRecords(zf, pkl[: -len("data.pkl")])
        unpickler = RestrictedUnpickler(io.BytesIO(zf.read(pkl)), records)
        return unpickler.load(), unpickler.skipped


def _first_line(err: BaseException) -> str:
    return torch_load_problem(err, limit=160)


def read_checkpoint_file(path: str | Path) -> LoadedFile:
    """Read ``path`` safely (see the module docstring); a file that is neither is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise LvisctlError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise LvisctlError(f"{path}: file not found")
    if zipfile.is_zipfile(path):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - mmengine meta objects: read again restricted below
            pass
        else:
            _check_views(loaded, path)
            return LoadedFile(loaded, "torch")
        try:
            obj, skipped = _read_restricted_zip(path)
        except Exception as err:  # noqa: BLE001 - truncated / foreign: the user's to fix
            raise LvisctlError(f"{path}: not a readable torch checkpoint ({_first_line(err)})") from None
        return LoadedFile(obj, "torch-restricted", skipped)
    with path.open("rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head[:1] != b"\x80":  # every pickle of protocol >= 2 starts with PROTO
            try:  # legacy (pre-1.6) torch files are pickles too; weights_only handles them
                return LoadedFile(torch.load(path, map_location="cpu", weights_only=True), "torch")
            except Exception:  # noqa: BLE001
                raise LvisctlError(
                    f"{path}: not a checkpoint (neither a torch zip file nor a pickle)"
                ) from None
        unpickler = RestrictedUnpickler(fh, encoding="latin1")
        try:
            obj = unpickler.load()
        except Exception as err:  # noqa: BLE001
            try:  # a legacy torch file (protocol 2 pickle with storages): weights_only reads it
                return LoadedFile(torch.load(path, map_location="cpu", weights_only=True), "torch")
            except Exception:  # noqa: BLE001
                raise LvisctlError(f"{path}: not a readable checkpoint ({_first_line(err)})") from None
        if isinstance(obj, int):  # the legacy (pre-1.6) torch format starts with a magic number
            return _read_legacy_file(path, fh, obj)
    return LoadedFile(obj, "pickle", unpickler.skipped)


def _read_legacy_file(path: Path, fh: io.BufferedReader, first: int) -> LoadedFile:
    """A legacy (pre-1.6, non-zip) torch file: ``torch.load`` weights-only, else the restricted reader
    over its storages (mmdet meta objects); anything else is one line naming the format."""
    from lvisctl.checkpoint_import.legacy import is_legacy, read_legacy

    if not is_legacy(first):
        raise LvisctlError(f"{path}: not a checkpoint (a pickle of a bare int)")
    try:
        return LoadedFile(torch.load(path, map_location="cpu", weights_only=True), "torch")
    except Exception:  # noqa: BLE001 - objects the weights-only loader refuses: read restricted below
        pass
    try:
        obj, skipped = read_legacy(fh, path.stat().st_size)
    except Exception as err:  # noqa: BLE001
        raise LvisctlError(
            f"{path}: legacy (pre-1.6) torch checkpoint that could not be read safely ({_first_line(err)}); "
            "convert it with torch.save(obj, new_path) in a trusted environment"
        ) from None
    return LoadedFile(obj, "torch-legacy", skipped)


def _check_views(obj: Any, path: Path, depth: int = 0) -> None:
    """torch.load makes views without copying, but every later step (a dtype cast, a finiteness check)
    would allocate a stride-0 tensor's full declared size: refuse tensors larger than their storage."""
    if isinstance(obj, torch.Tensor):
        if obj.numel() * obj.element_size() > obj.untyped_storage().nbytes():
            raise LvisctlError(
                f"{path}: not a readable torch checkpoint (a tensor of size {list(obj.shape)} is larger "
                "than its storage: overlapping strides)"
            )
    elif isinstance(obj, dict) and depth < 8:
        for value in obj.values():
            _check_views(value, path, depth + 1)
    elif isinstance(obj, (list, tuple)) and depth < 8:
        for value in obj:
            _check_views(value, path, depth + 1)


def as_tensor_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Entries of a state dict that are tensors or numeric numpy arrays, as tensors (others dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[str(key)] = value
        elif isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            out[str(key)] = torch.from_numpy(np.ascontiguousarray(value))
    return out
