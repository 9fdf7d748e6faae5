"""Does a checkpoint predict the categories of the json it is run on? (ids AND names)

A model's class ``i`` is the ``i``-th category id of the table it was trained on (its
``category_stats``). Run on a json of another category table, its detections would be written under the
json's ids with the wrong meaning (names swapped for the same ids, 12 classes on an 8-class json, the
LVIS v1 table on a synthetic json) and ``evaluate`` would score them without a word. So every command that
runs a checkpoint on a json (``tta-infer``, ``analyze masks``) compares the two tables first and refuses a
difference; ``by_name=True`` maps the checkpoint's classes onto the json's ids by category name instead
(classes whose name the json lacks are not predicted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lvisctl.data.categories import CategoryMap, CategoryStats
from lvisctl.errors import LvisctlError

MAX_LISTED = 3


class MappedCategoryMap(CategoryMap):
    """The checkpoint's class indices -> the json's category ids, matched by name.

    ``cat_id(index)`` is ``None`` for a class the json has no category of that name for: its detections
    are dropped (``detections_to_records`` skips them)."""

    def __init__(self, json_ids: Iterable[int | None]) -> None:
        self.cat_ids = list(json_ids)  # type: ignore[arg-type]  # checkpoint order, not sorted
        self._index = {cid: i + 1 for i, cid in enumerate(self.cat_ids) if cid is not None}

    def cat_id(self, index: int) -> int | None:  # type: ignore[override]
        if not 1 <= index <= len(self.cat_ids):
            raise IndexError(f"class index {index} outside 1..{len(self.cat_ids)}")
        return self.cat_ids[index - 1]

    @property
    def matched(self) -> int:
        return sum(c is not None for c in self.cat_ids)


def _name(record: Mapping[str, Any]) -> str | None:
    name = record.get("name")
    return str(name) if name not in (None, "") else None


def _is_real_name(name: str | None, cat_id: int) -> bool:
    # CategoryStats.from_lvis stands a category's id in for a missing name
    return name is not None and name != str(cat_id)


def category_differences(stats: CategoryStats, categories: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """What differs between the checkpoint's table and the json's ``categories`` (empty: the same)."""
    ckpt = dict(zip(stats.category_map.cat_ids, stats.names, strict=True))
    ours = {int(c): _name(r) for c, r in categories.items()}
    problems = []
    if set(ckpt) != set(ours):
        only_ckpt = sorted(set(ckpt) - set(ours))
        only_json = sorted(set(ours) - set(ckpt))
        problems.append(
            f"{len(ckpt)} categories in the checkpoint, {len(ours)} in the json "
            f"({len(only_ckpt)} ids only in the checkpoint, e.g. {only_ckpt[:MAX_LISTED]}; "
            f"{len(only_json)} only in the json, e.g. {only_json[:MAX_LISTED]})"
        )
    renamed = [
        f"id {c} is {ours[c]!r} in the json but {ckpt[c]!r} in the checkpoint"
        for c in sorted(set(ckpt) & set(ours))
        if _is_real_name(ckpt[c], c) and ours[c] is not None and ours[c] != ckpt[c]
    ]
    if renamed:
        more = f" (and {len(renamed) - MAX_LISTED} more)" if len(renamed) > MAX_LISTED else ""
        problems.append("; ".join(renamed[:MAX_LISTED]) + more)
    return problems


def check_categories(
    stats: CategoryStats,
    categories: Mapping[int, Mapping[str, Any]],
    *,
    json_path: object,
    checkpoint: object,
    by_name: bool = False,
) -> CategoryMap:
    """The map to write the checkpoint's detections with, for a json with ``categories``.

    The same table: the checkpoint's own map. A different one: refused with one line, unless ``by_name``
    (then the classes are matched to the json's ids by name; refused when no name matches). A json
    without categories (a bare image list) has nothing to compare with: the checkpoint's map."""
    if not categories:
        return stats.category_map
    problems = category_differences(stats, categories)
    if not by_name:
        if problems:
            raise LvisctlError(
                f"{json_path}: its categories differ from those of checkpoint {checkpoint}: "
                f"{'; '.join(problems)}; its predictions would be written under the wrong categories "
                "(--map-by-name maps the checkpoint's classes onto the json's by name)"
            )
        return stats.category_map
    return _map_by_name(stats, categories, json_path=json_path, checkpoint=checkpoint)


def _map_by_name(
    stats: CategoryStats,
    categories: Mapping[int, Mapping[str, Any]],
    *,
    json_path: object,
    checkpoint: object,
) -> MappedCategoryMap:
    by_name: dict[str, int] = {}
    for cat_id, record in categories.items():
        name = _name(record)
        if name is not None:
            if name in by_name:
                raise LvisctlError(
                    f"{json_path}: category name {name!r} is used by ids {by_name[name]} and "
                    f"{cat_id}: --map-by-name needs unique names"
                )
            by_name[name] = int(cat_id)
    mapped = MappedCategoryMap(by_name.get(n) for n in stats.names)
    if mapped.matched == 0:
        raise LvisctlError(
            f"{json_path}: --map-by-name: none of the {len(stats.names)} category names of checkpoint "
            f"{checkpoint} is in the json"
        )
    return mapped


def mapping_note(mapped: CategoryMap, stats: CategoryStats, json_path: object) -> str | None:
    """One line saying what a by-name map changed (``None`` for an identity map)."""
    if not isinstance(mapped, MappedCategoryMap):
        return None
    moved = sum(
        1 for a, b in zip(stats.category_map.cat_ids, mapped.cat_ids, strict=True) if b is not None and a != b
    )
    dropped = [n for n, c in zip(stats.names, mapped.cat_ids, strict=True) if c is None]
    line = (
        f"note: {json_path}: categories mapped by name: {mapped.matched} of {len(mapped)} matched, "
        f"{moved} to another id"
    )
    if dropped:
        line += f"; {len(dropped)} not in the json are not predicted (e.g. {dropped[:MAX_LISTED]})"
    return line


def checkpoint_category_map(
    ckpt: Mapping[str, Any],
    data: Any,
    *,
    checkpoint: object,
    by_name: bool = False,
    notify: Callable[[str], None] | None = None,
) -> CategoryMap:
    """:func:`check_categories` of a loaded checkpoint against a loaded LVIS file (``LvisData``), before
    the model is built; ``notify`` hears what a by-name map changed."""
    stats = CategoryStats.from_dict(ckpt["category_stats"])
    checked = check_categories(
        stats, data.categories, json_path=data.path, checkpoint=checkpoint, by_name=by_name
    )
    note = mapping_note(checked, stats, data.path)
    if note and notify is not None:
        notify(note)
    return checked
