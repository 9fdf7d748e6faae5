"""Image sources that are not LVIS files: folders, Open Images image lists, hand-made image-info jsons.

Inference (``tta-infer``, ``pseudolabel``) reads LVIS-format image lists. :func:`image_info_for` turns
what users have into one:

* a folder (searched recursively for ``.jpg``/``.jpeg``/``.png``, in sorted order),
* a folder restricted by an image list: Open Images' CSV (column ``ImageID``; ``<root>/<ImageID>.jpg``),
  a CSV with a ``file_name`` or ``path`` column, or a text file with one id or relative path per line,
* an image-info json whose records lack ``width``/``height`` (or ``id``).

An LVIS annotation file or a complete image-info json passes through untouched.

Scale (the paper's 1.7 M Open Images): the source is *streamed*. Planning (listing, ids) keeps a few
dozen bytes per image (the id set that guards against hash collisions) and never opens a file; sizes
come from the file headers (PIL's lazy ``Image.open`` reads the header, not the pixels), read by a
thread pool over a bounded window; the image-info json is written as the records come. Ids are stable:
a hash of the image's path relative to the root (53 bits, exact in every json reader), so the same file
gets the same id in every run, whatever else the folder holds.

Unreadable images (no file, no image header, a JPEG without its end marker, i.e. a truncated download)
are skipped and reported (:class:`SkipReport`); a source without one readable image is an error.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from lvisctl.errors import LvisctlError
from lvisctl.rundir.io import read_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_LISTED_SKIPS = 5
ID_BITS = 53  # ids stay exact as float64 (JavaScript, some json readers)
_WINDOW_PER_WORKER = 64  # header reads in flight per thread: bounded memory, enough to hide latency


@dataclass
class SkipReport:
    """Images left out: how many, and the first few with the reason."""

    count: int = 0
    first: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0  # entries of an image list naming an image listed before (kept once)
    first_duplicates: list[str] = field(default_factory=list)
    rotated: int = 0  # entries of an Open Images CSV with a non-zero Rotation (not applied: said once)

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.first) < MAX_LISTED_SKIPS:
            self.first.append((path, reason))

    def add_duplicate(self, path: str) -> None:
        self.duplicates += 1
        if len(self.first_duplicates) < MAX_LISTED_SKIPS:
            self.first_duplicates.append(path)

    def lines(self) -> list[str]:
        """Human-readable report (empty when nothing was skipped)."""
        out = []
        if self.duplicates:
            out.append(
                f"{self.duplicates} duplicate image list entr{'y' if self.duplicates == 1 else 'ies'} "
                f"kept once (e.g. {', '.join(self.first_duplicates)})"
            )
        if self.rotated:
            out.append(
                f"{self.rotated} image list entr{'y' if self.rotated == 1 else 'ies'} with a non-zero "
                "Rotation: the Rotation column is ignored (images are read as stored, EXIF orientation "
                "applied)"
            )
        if not self.count:
            return out
        out += [f"skipped {self.count} unreadable or missing image(s):"]
        out += [f"  {path}: {reason}" for path, reason in self.first]
        if self.count > len(self.first):
            out.append(f"  ... and {self.count - len(self.first)} more")
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "first": [list(p) for p in self.first]}
        if self.duplicates:
            out["duplicates"] = self.duplicates
        return out


class PlannedImage(NamedTuple):
    """An image before its header is read: id, path relative to the root, and any known fields (a tuple:
    1.7 M of them are made in a few seconds)."""

    image_id: int
    file_name: str
    record: dict[str, Any] | None = None  # the source json's record (image-info input), else None


@dataclass
class ImageSource:
    """What :func:`image_info_for` made: the LVIS-format file to run on and where its images live."""

    path: Path
    image_root: Path | None
    num_images: int
    skipped: SkipReport
    converted: bool  # False: the input was already a complete LVIS / image-info file


# ---------------------------------------------------------------------------------------------- ids
def stable_image_id(rel_path: str, salt: int = 0) -> int:
    """A positive 53-bit id from the image's relative path (``salt`` > 0 only after a collision)."""
    key = rel_path if not salt else f"{rel_path}#{salt}"
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - ID_BITS)) or 1


def _unique_ids(entries: Iterable[tuple[str, dict | None]]) -> Iterator[PlannedImage]:
    """Assign stable ids; a (rare) hash collision takes the next salt, deterministically in source order."""
    seen: set[int] = set()
    for rel, record in entries:
        given = record.get("id") if record else None
        if isinstance(given, int) and not isinstance(given, bool):
            image_id = given
            if image_id in seen:
                raise LvisctlError(f"{rel}: duplicate image id {image_id}")
        else:
            salt, image_id = 0, stable_image_id(rel)
            while image_id in seen:
                salt += 1
                image_id = stable_image_id(rel, salt)
        seen.add(image_id)
        yield PlannedImage(image_id, rel, record)


# ----------------------------------------------------------------------------------------- listing
def iter_folder(root: Path) -> Iterator[str]:
    """Image files under ``root`` (recursive, sorted, symlinked folders not followed), as posix paths
    relative to ``root``."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as it:
                entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        except OSError:
            continue  # an unreadable sub-folder: its images cannot be read anyway
        subdirs = []
        for name, is_dir in entries:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if is_dir:
                subdirs.append(rel)
            elif name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                yield rel
        stack.extend(reversed(subdirs))  # depth-first, in sorted order


def iter_image_list(path: Path, skips: SkipReport | None = None) -> Iterator[str]:
    """Relative image paths from an image list: Open Images' CSV (``ImageID`` -> ``<ImageID>.jpg``), a
    CSV with a ``file_name`` or ``path`` column, or one id / relative path per line. Each image once: a
    repeated entry would be predicted (and pseudo-labelled) twice under two ids; ``skips`` counts them.
    UTF-8 (with or without a BOM, as spreadsheets save it) or UTF-16 with a BOM; anything else is refused."""
    seen: set[str] = set()
    try:
        for rel in _list_entries(path):
            if rel in seen:
                if skips is not None:
                    skips.add_duplicate(rel)
                continue
            seen.add(rel)
            yield rel
    except UnicodeError as err:
        where = f" (byte {err.start})" if isinstance(err, UnicodeDecodeError) else ""
        raise LvisctlError(
            f"{path}: not UTF-8 text{where}; save the image list as UTF-8 (or UTF-16 with a BOM)"
        ) from None


def locate_listed(root: Path, rels: Iterable[str]) -> Iterator[str]:
    """Listed images where they are: ``root/<entry>`` when there, else the file of that name (stem) anywhere
    under ``root``: Open Images' CVDF archives extract to ``train_0/ ... train_f/<ImageID>.jpg``. The index
    by stem is one walk of the root, made at the first entry not directly under it; an entry found
    nowhere is kept (and reported as "file not found" when its header is read)."""
    index: dict[str, str] | None = None
    for rel in rels:
        if index is None and (root / rel).is_file():
            yield rel
            continue
        if index is None:
            index = {}
            for found in iter_folder(root):  # sorted: the first file of a stem wins
                index.setdefault(PurePosixPath(found).stem, found)
        if "/" in rel and (root / rel).is_file():  # a listed path (file_name / path column) is taken as is
            yield rel
        else:
            yield index.get(PurePosixPath(rel).stem, rel)


def count_rotated(path: Path) -> int:
    """Entries of an Open Images CSV whose ``Rotation`` is set and not 0 (0 when there is no such column)."""
    with open(path, encoding=_list_encoding(path), newline="") as fh:
        reader = csv.reader(fh)
        columns = [c.strip() for c in next(reader, [])]
        if "Rotation" not in columns:
            return 0
        col = columns.index("Rotation")
        return sum(1 for row in reader if len(row) > col and row[col].strip() not in ("", "0", "0.0"))


def _list_encoding(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # the BOM says which byte order
    return "utf-8-sig"  # a UTF-8 BOM is dropped (it would hide the ImageID column's name)


def _list_entries(path: Path) -> Iterator[str]:
    with open(path, encoding=_list_encoding(path), newline="") as fh:
        first = fh.readline()
        columns = [c.strip().strip('"') for c in next(csv.reader([first]))] if first.strip() else []
        if "ImageID" in columns or "file_name" in columns or "path" in columns:
            key = next(c for c in ("ImageID", "file_name", "path") if c in columns)
            col, suffix = columns.index(key), key == "ImageID"
            for line, row in enumerate(csv.reader(fh), start=2):
                value = row[col].strip() if len(row) > col else ""
                if value:
                    checked = _checked_entry(value, path, line, name_only=suffix)
                    yield _with_suffix(checked) if suffix else checked
            return
        if "," in first:
            raise LvisctlError(f"{path}: CSV without an ImageID, file_name or path column")
        for line, text in enumerate((first, *fh), start=1):
            value = text.strip()
            if value:
                yield _with_suffix(_checked_entry(value, path, line, name_only=False))


def _checked_entry(value: str, path: Path, line: int, *, name_only: bool) -> str:
    """An image-list entry that stays under the image root. An ``ImageID`` is a name: no separator at
    all; a relative path (``file_name``/``path`` columns, plain lines) is neither absolute nor has a
    ``..``. Otherwise ``../outside/secret`` would be read from outside the root and recorded."""
    parts = re.split(r"[/\\]", value)
    if name_only and len(parts) > 1:
        problem = "an ImageID is a name, not a path (no '/' or '\\')"
    elif value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) or ".." in parts:
        problem = "an image must lie under the image root (no absolute path, no '..')"
    else:
        return value
    raise LvisctlError(f"{path}: line {line}: {value!r}: {problem}")


def _with_suffix(value: str) -> str:
    return (
        value if value.endswith(IMAGE_SUFFIXES) or value.lower().endswith(IMAGE_SUFFIXES) else value + ".jpg"
    )


def _json_entries(path: Path) -> tuple[dict[str, Any], list[dict]]:
    payload = read_json(path, expect=dict, what="an image-info json with an 'images' list")
    images = payload.get("images")
    if not isinstance(images, list):
        raise LvisctlError(f"{path}: an image-info json needs a top-level 'images' list")
    bad = [r for r in images if not isinstance(r, dict) or not (r.get("file_name") or r.get("coco_url"))]
    if bad:
        raise LvisctlError(
            f"{path}: {len(bad)} image record(s) without file_name or coco_url, e.g. {str(bad[0])[:60]}"
        )
    return payload, images


def _is_complete(payload: dict[str, Any], images: Sequence[dict]) -> bool:
    """Already an LVIS file or a usable image-info file: nothing to fill in."""
    if "annotations" in payload:
        return True
    need = ("id", "width", "height")
    return bool(payload.get("categories")) and all(all(k in r for k in need) for r in images)


# ------------------------------------------------------------------------------------------ headers
def read_image_size(path: Path) -> tuple[int, int]:
    """Upright ``(width, height)`` from the file header (EXIF rotations by 90 degrees swap them, as the
    image reader applies them); raises for a file that cannot be used (missing, not an image, a JPEG/PNG
    cut short: its end marker is missing). The one image reader's header probe does the work."""
    from lvisctl.data.image_io import probe_image

    height, width = probe_image(path)
    return width, height


def _sized(root: Path, planned: PlannedImage) -> tuple[PlannedImage, tuple[int, int] | str]:
    path = root / planned.file_name
    try:
        return planned, read_image_size(path)
    except FileNotFoundError:
        return planned, "file not found"
    except Exception as err:  # PIL: OSError, SyntaxError, ValueError, DecompressionBombError; LvisctlError
        text = (str(err).splitlines() or [type(err).__name__])[0]
        return planned, text.removeprefix(f"{path}: ")[:120]


def iter_image_records(
    planned: Iterable[PlannedImage], root: Path, skips: SkipReport, *, workers: int = 8
) -> Iterator[dict[str, Any]]:
    """LVIS image records (``id``, ``width``, ``height``, ``file_name``) in source order; sizes read from
    headers by ``workers`` threads, a bounded window at a time; unreadable images go to ``skips``."""
    window = max(workers, 1) * _WINDOW_PER_WORKER
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        batch: list[PlannedImage] = []
        for item in planned:
            batch.append(item)
            if len(batch) >= window:
                yield from _records(pool.map(lambda p: _sized(root, p), batch), skips)
                batch = []
        yield from _records(pool.map(lambda p: _sized(root, p), batch), skips)


def _records(results: Iterable[tuple[PlannedImage, Any]], skips: SkipReport) -> Iterator[dict[str, Any]]:
    for planned, size in results:
        if isinstance(size, str):
            skips.add(planned.file_name, size)
            continue
        base = dict(planned.record or {})
        yield {
            "neg_category_ids": [],  # nothing verified: every category may be present
            "not_exhaustive_category_ids": [],
            **base,
            "id": planned.image_id,
            "width": size[0],
            "height": size[1],
            "file_name": planned.file_name,
        }


# ------------------------------------------------------------------------------------------ writing
def write_image_info(
    records: Iterable[dict[str, Any]],
    categories: Sequence[dict[str, Any]],
    out_dir: Path,
    name: str,
    info: dict[str, Any],
) -> tuple[Path, int]:
    """Stream an LVIS image-info json (``info``, ``categories``, empty ``annotations``, ``images``) to
    ``out_dir/<name>-<content hash>.images.json``; returns ``(path, number of images)``. The same
    content always gets the same name (a resumed run finds its file), other content another one."""
    made_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:

            def put(text: str) -> None:
                fh.write(text)
                digest.update(text.encode("utf-8"))

            # "annotations": [] (none) makes lvis-api, which needs the key, load the file
            head = {"info": info, "licenses": [], "categories": list(categories), "annotations": []}
            put(json.dumps(head, separators=(",", ":"))[:-1] + ',"images":[')
            for record in records:
                put(("," if count else "") + json.dumps(record, separators=(",", ":")))
                count += 1
            put("]}\n")
            fh.flush()
            os.fsync(fh.fileno())
        path = out_dir / f"{name}-{digest.hexdigest()[:8]}.images.json"
        if count:
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if made_dir and not count:  # a refused list or no readable image: no empty folder left behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()
    return path, count


def categories_from_stats(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """LVIS category records from a checkpoint's ``category_stats`` (what the model predicts), so files
    made from its predictions validate and load in lvis-api."""
    return [
        {
            "id": int(cid),
            "name": str(name),
            "frequency": str(freq),
            "image_count": int(ic),
            "instance_count": int(nc),
            "synonyms": [str(name)],
        }
        for cid, name, freq, ic, nc in zip(
            stats["cat_ids"],
            stats["names"],
            stats["frequency"],
            stats["image_count"],
            stats["instance_count"],
            strict=True,
        )
    ]


# ------------------------------------------------------------------------------------------ entry
def plan_source(
    source: Path,
    *,
    image_root: Path | None = None,
    image_list: Path | None = None,
    skips: SkipReport | None = None,
) -> tuple[Iterator[PlannedImage], Path, str]:
    """``(planned images, image root, name)`` of a folder / folder + list / image-info json, streamed.
    ``image_root`` only applies to a json (a folder is its own root); ``skips`` counts repeated list
    entries."""
    if source.is_dir():
        root = source.expanduser().resolve()  # the folder is the root its paths and ids are relative to
        rels: Iterable[str] = iter_folder(root)
        if image_list:
            rels = locate_listed(root, iter_image_list(image_list, skips))
            if skips is not None:
                skips.rotated = count_rotated(image_list)
        return _unique_ids((rel, None) for rel in rels), root, _name(image_list or source)
    if image_list is not None:
        raise LvisctlError(f"{image_list}: --image-list goes with a folder of images, not with {source}")
    _, images = _json_entries(source)
    from lvisctl.data.formats import find_image

    root = (image_root or source.parent).expanduser().resolve()
    # coco_url's split folder first, then file_name (COCO-2014 prefix dropped): whichever exists
    rels = (find_image(root, r).relative_to(root).as_posix() for r in images)
    return _unique_ids(zip(rels, images, strict=True)), root, _name(source)


def _name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.name) or "images"


def image_info_for(
    source: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    categories: Callable[[], Sequence[dict[str, Any]]],
    image_root: str | os.PathLike[str] | None = None,
    image_list: str | os.PathLike[str] | None = None,
    workers: int = 8,
) -> ImageSource:
    """Turn ``source`` (a folder, a json) into an LVIS-format image-info file under ``out_dir``.

    ``image_root`` is the folder a json's files are relative to (default: the json's folder); a folder
    source is its own root. ``categories()`` is called only when a file is written (the predicting model's).
    A complete LVIS / image-info json is returned as is.
    """
    source = Path(source).expanduser()
    root_arg = Path(image_root).expanduser() if image_root is not None else None
    list_arg = Path(image_list).expanduser() if image_list is not None else None
    if not source.exists():
        raise LvisctlError(f"{source}: not found (expected an image folder or an LVIS / image-info json)")
    if list_arg is not None and list_arg.is_dir():
        raise LvisctlError(f"{list_arg}: is a folder; --image-list takes a file (CSV or one entry per line)")
    if list_arg is not None and not list_arg.is_file():
        raise LvisctlError(f"{list_arg}: image list not found")
    if source.is_file():
        payload, images = _json_entries(source)
        if _is_complete(payload, images):
            return ImageSource(source.resolve(), root_arg, len(images), SkipReport(), converted=False)
    skips = SkipReport()
    planned, root, name = plan_source(source, image_root=root_arg, image_list=list_arg, skips=skips)
    records = iter_image_records(planned, root, skips, workers=workers)
    info = {"description": f"lvisctl image info of {source.resolve()}", "image_root": str(root)}
    path, count = write_image_info(records, categories(), Path(out_dir), name, info)
    if count == 0:
        detail = "; ".join(f"{p}: {r}" for p, r in skips.first) or "no .jpg/.jpeg/.png files"
        raise LvisctlError(f"{source}: no readable image ({skips.count} skipped: {detail})")
    return ImageSource(path.resolve(), root, count, skips, converted=True)
