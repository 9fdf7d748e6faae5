"""The legacy (pre-1.6, non-zip) torch checkpoint format, read without executing code from the file.

``torch.save(..., _use_new_zipfile_serialization=False)`` (and every torch before 1.6) writes four
pickles and then the raw storages: the magic number, the protocol version, system info, the object
(tensors refer to storages by a persistent id ``("storage", type, key, location, numel, view)``), the
list of storage keys; then per key an int64 element count and the bytes. torchvision's and mmdet's older
model-zoo files are in this format. It is read here by the same restricted unpickler as zip files
(:class:`lvisctl.checkpoint_import.unpickler.RestrictedUnpickler`): a first pass learns each storage's dtype
and size, the data blocks are read with their sizes checked against the declarations and the file size
before anything is allocated, and a second pass builds the object over them.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

from lvisctl.checkpoint_import.unpickler import RestrictedUnpickler, _StorageRef

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _Declarations(RestrictedUnpickler):
    """First pass over the object pickle: records every storage's (dtype, element count); builds none."""

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, encoding="latin1")
        self.declared: dict[str, tuple[torch.dtype, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return lambda *_a: None  # no tensor yet: the data comes after the pickle
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.60}")
        if len(pid) > 5 and pid[5] is not None:  # storage views: torch < 0.4 only
            raise pickle.UnpicklingError("storage views of torch < 0.4 are not supported")
        dtype = pid[1].dtype if isinstance(pid[1], _StorageRef) else torch.uint8
        numel = int(pid[4])
        if numel < 0:
            raise pickle.UnpicklingError(f"storage {pid[2]} declares {numel} elements")
        self.declared[str(pid[2])] = (dtype, numel)
        return None


def is_legacy(first_object: Any) -> bool:
    """The first pickle of a file was the legacy format's magic number."""
    return isinstance(first_object, int) and first_object == LEGACY_MAGIC


def read_legacy(fh: io.BufferedReader, file_size: int) -> tuple[Any, list[str]]:
    """The object of a legacy file whose magic number was just read from ``fh``; and the skipped classes.

    Raises ``pickle.UnpicklingError`` (the caller turns it into one line naming the file)."""
    protocol = RestrictedUnpickler(fh, encoding="latin1").load()
    if protocol != LEGACY_PROTOCOL:
        raise pickle.UnpicklingError(f"legacy protocol {protocol!r} (expected {LEGACY_PROTOCOL})")
    RestrictedUnpickler(fh, encoding="latin1").load()  # system info (endianness, type sizes)
    start = fh.tell()
    scan = _Declarations(fh)
    scan.load()
    keys = RestrictedUnpickler(fh, encoding="latin1").load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("no storage key list after the object")
    records = {str(key): _read_block(fh, scan.declared, str(key), file_size) for key in keys}
    fh.seek(start)
    unpickler = RestrictedUnpickler(fh, _LegacyRecords(records), encoding="latin1")
    return unpickler.load(), unpickler.skipped


class _LegacyRecords:
    """The storages of a legacy file, already read and size-checked (:func:`_read_block`), behind the
    ``read(key, dtype, declared)`` interface the restricted unpickler asks of a torch zip's records."""

    def __init__(self, blocks: dict[str, bytes]) -> None:
        self.blocks = blocks

    def read(self, key: str, dtype: torch.dtype, declared: int | None) -> bytearray:
        if key not in self.blocks:
            raise pickle.UnpicklingError(f"storage record {key} missing")
        return bytearray(self.blocks[key])


def _read_block(fh: io.BufferedReader, declared: dict, key: str, file_size: int) -> bytes:
    if key not in declared:
        raise pickle.UnpicklingError(f"storage {key} is not used by the object")
    dtype, numel = declared[key]
    count = int.from_bytes(fh.read(8), "little", signed=True)
    nbytes = count * torch.empty(0, dtype=dtype).element_size()
    if count != numel or nbytes > file_size - fh.tell():  # checked before reading (no huge allocation)
        raise pickle.UnpicklingError(
            f"storage {key}: {count} elements stored, {numel} declared, {file_size - fh.tell()} bytes left"
        )
    data = fh.read(nbytes)
    if len(data) != nbytes:
        raise pickle.UnpicklingError(f"storage {key}: file ends inside its data")
    return data
