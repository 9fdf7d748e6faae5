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

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvisctl.checkpoint_import.legacy import is_legacy, read_legacy
from lvisctl.checkpoint_import.unpickler import RestrictedUnpickler
from lvisctl.errors import LvisctlError, torch_load_problem


@dataclass
class LoadedFile:
    """What was read: the top-level object and the names of the classes that were skipped."""

    obj: Any
    kind: str  # "torch" | "torch-restricted" | "torch-legacy" | "pickle"
    skipped: list[str] = field(default_factory=list)


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
