"""The allowed values of every config key that picks one of a fixed set of things.

One table, ``CHOICES``: dotted key -> {value: one-line description}. ``load_config`` checks every config
against it before anything is loaded (a typo fails in milliseconds, not after the training data has
loaded), with a "did you mean"; the builders (``modeling/build.py``, ``data/samplers.py``, ...) assert that
their factories cover exactly these names, so the table and the code cannot drift apart. ``lvisctl configs
show`` and the ``_base_`` yaml comments describe the same values.
"""

from __future__ import annotations

from lvisctl.registry import REGISTRIES, registry_for

CHOICES: dict[str, dict[str, str]] = {
    "device": {
        "auto": "CUDA when present, else CPU",
        "cpu": "always the CPU",
        "cuda": "the GPU of this process (LOCAL_RANK under torchrun)",
    },
    "runtime.cudnn_benchmark": {
        "auto": "off in training (multi-scale shapes change every step), on for inference",
        "always": "cudnn.benchmark on in training and inference",
        "never": "cudnn.benchmark off everywhere",
    },
    "model.backbone.norm": {
        "frozen_bn": "BatchNorm with frozen ImageNet statistics (pretrained trunks)",
        "bn": "trainable BatchNorm (training from scratch)",
        "gn": "GroupNorm, 32 groups",
    },
    "model.roi_heads.cascade.test_mask": {
        "mean": "mean of all stages' mask probabilities (mmdet's HTC / Cascade Mask R-CNN test)",
        "last": "the last stage's mask only (detectron2's Cascade Mask R-CNN)",
    },
    "model.roi_heads.roi_pool": {
        "align": "RoIAlign",
        "deform": "deformable RoI pooling of the box branch (more computation on head)",
    },
    "model.mask_head.level_assign": {
        "box": "FPN rule on the box area (224 px -> P4)",
        "eq1": "the paper's Eq. 1: box and mask area (two passes at test time)",
    },
    "model.mask_head.eq1_box_rule": {
        "log2": "Eq. 1's box term as the FPN mapping with finest scale 56",
        "paper": "Eq. 1's box term as printed, floor(S_bbox / 56^2)",
    },
    "inference.tta.mode": {
        "plain": "the test scales merged by class-wise NMS",
        "paper": "section 3.3: flip, box range per scale, rare boost, NMS + Soft-NMS, mask from best scale",
    },
    "inference.tta.soft_nms_method": {
        "gaussian": "score * exp(-iou^2 / sigma) for every overlapping box (Bodla et al. 2017)",
        "linear": "score * (1 - iou) above soft_nms_iou",
    },
    "inference.ensemble.method": {
        "wbf": "weighted boxes fusion (ensemble-boxes)",
        "nms": "class-wise NMS over the members' detections",
        "soft-nms": "class-wise Soft-NMS over the members' detections",
    },
}


def allowed_values(key: str) -> dict[str, str] | None:
    """name -> description of the values ``key`` may take; None when ``key`` is not a choice key.

    A key with a plug-in registry (``lvisctl.registry.REGISTRIES``) takes its names from the registry, the
    one place a plug-in declares its name; the others from ``CHOICES``.
    """
    registry = registry_for(key)
    return registry.descriptions() if registry is not None else CHOICES.get(key)


def choice_keys() -> list[str]:
    """Every config key that picks one of a set of names (fixed tables and registries)."""
    return list(dict.fromkeys([*CHOICES, *REGISTRIES]))


def choice_names(key: str) -> tuple[str, ...]:
    """The allowed values of ``key`` in table order (``KeyError`` for a key that is not a choice)."""
    allowed = allowed_values(key)
    if allowed is None:
        raise KeyError(key)
    return tuple(allowed)
