"""The RoI heads' state-dict names, old and new: one rename, applied wherever an old name may come in.

Up to the RoI-head modules redesign the branches' parts sat flat on the RoI heads (or on each cascade stage)
under Mask R-CNN's names: ``roi_heads.box_head.*``, ``roi_heads.stages.2.mask_iou_head.*``. Now the box and
mask branches are modules holding their parts: ``roi_heads.box.head.*``, ``roi_heads.stages.2.mask.scorer.
head.*``. Every producer of the old names keeps working because the names are renamed where they enter:

* ``load_state_dict`` (old checkpoints, ``lvisctl import-checkpoint``'s torchvision / mmdet / detectron2
  layouts, which still write the old names): a pre-hook of the RoI heads (``RoIHeads._load_from_state_dict``);
* the tensors ``engine/init_weights.py`` and ``checkpoint_import`` compare with ``model.state_dict()``, and
  ``train.freeze`` prefixes (configs name ``roi_heads.mask_head`` and the like): ``upgrade_key(s)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

V = TypeVar("V")

# old part name on the RoI heads / a cascade stage -> its place in the branches (order: the parameter order)
OLD_PARTS: dict[str, str] = {
    "box_extractor": "box.extractor",
    "box_head": "box.head",
    "cls_loss": "box.cls_loss",
    "mask_extractor": "mask.extractor",
    "mask_head": "mask.head",
    "mask_loss": "mask.loss",
    "boundary_extractor": "mask.head.extractor",
    "mask_iou_head": "mask.scorer.head",
}


def upgrade_key(name: str, prefix: str = "roi_heads.") -> str:
    """A state-dict key, parameter name or freeze prefix in today's layout (unchanged when already so, or
    outside the RoI heads ``prefix``)."""
    if not name.startswith(prefix):
        return name
    rest = name[len(prefix) :]
    head = prefix
    parts = rest.split(".")
    if parts[0] == "stages" and len(parts) > 2:  # roi_heads.stages.<i>.<part>...
        head += f"stages.{parts[1]}."
        parts = parts[2:]
    new = OLD_PARTS.get(parts[0])
    if new is None:
        return name
    return head + ".".join([new, *parts[1:]])


def upgrade_keys(state: Mapping[str, V], prefix: str = "roi_heads.") -> dict[str, V]:
    """``state`` with every old RoI-head key renamed (order kept, so the parameter order stays)."""
    return {upgrade_key(k, prefix): v for k, v in state.items()}


def upgrade_prefixes(prefixes: Iterable[str]) -> list[str]:
    """``train.freeze``-style module prefixes in today's layout."""
    return [upgrade_key(p) for p in prefixes]
