"""Old configs keep loading: renamed keys (``ALIASES``) and keys whose addition changed behaviour."""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Mapping
from typing import Any

from lvisctl.config import dotted
from lvisctl.errors import LvisctlError

# Old key -> the key that replaced it. Old configs and checkpoints keep loading, with a note.
ALIASES = {
    # test-time settings lived twice (model.test.* and inference.*); inference.* is the one kept
    "model.test.score_thresh": "inference.score_thresh",
    "model.test.nms_thresh": "inference.nms_thresh",
    "model.test.detections_per_img": "inference.detections_per_image",
}
# When a config has both: the value the old code effectively used (the model filtered by model.test.*,
# then inference.* filtered its output again, so the stricter of the two applied).
_COMBINE = {"inference.score_thresh": max, "inference.detections_per_image": min}
_noted: set[str] = set()


def apply_aliases(data: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Move old keys (``ALIASES``) to their new place (given both, as the old code combined them); a note
    once per key."""
    out = copy.deepcopy(dict(data))
    for old, new in ALIASES.items():
        found, value = dotted.remove(out, old)
        if not found:
            continue
        if old not in _noted:
            _noted.add(old)
            print(f"note: {source}: {old} is deprecated; it is read as {new}", file=sys.stderr)
        has_new, new_value = dotted.lookup(out, new)
        if has_new and new in _COMBINE and value is not None and new_value is not None:
            value = _COMBINE[new](value, new_value)
        if not has_new or new in _COMBINE:
            dotted.assign(out, new, value)
    return out


# Keys whose default changed behaviour when they were added: a saved config without them was trained
# (and is evaluated) with the value here, not with today's default.
BEHAVIOUR_BEFORE_KEY: dict[str, Any] = {
    "model.roi_heads.cascade.sampling_ratio": 2,
    "model.roi_heads.cascade.aligned": False,
    "model.roi_heads.cascade.smooth_l1_beta": 1 / 9,
    "model.roi_heads.cascade.test_mask": "last",
}


def keep_old_behaviour(saved: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` (a checkpoint's config) with each key of ``BEHAVIOUR_BEFORE_KEY`` it lacks set to the
    value the code had before the key existed."""
    out = copy.deepcopy(dict(saved))
    if not isinstance(out.get("model"), Mapping):
        return out
    for key, value in BEHAVIOUR_BEFORE_KEY.items():
        if not dotted.lookup(out, key)[0]:
            with contextlib.suppress(LvisctlError):  # a value where a section should be: left as saved
                dotted.assign(out, key, value)
    return out
