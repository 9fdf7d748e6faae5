"""Key layouts of torchvision, mmdet 3.x and detectron2 Mask R-CNN checkpoints, mapped onto lvisctl names.

Each ``map_*`` function renames the source tensors to ``build_model(cfg).state_dict()`` names and converts
what a framework bakes into its weights, exactly:

* background slot: mmdet and detectron2 put it last in the classifier (K + 1 logits) and have no
  background slot in the class-specific box / mask outputs; lvisctl (torchvision) has it first. Rows are
  reordered and a zero background slot is added (never read at test time: labels start at 1).
* mmdet's Seesaw models (``mask-rcnn_r50_fpn_seesaw-loss_sample1e-3-ms-2x_lvis-v1`` and the rest of
  ``configs/seesaw_loss``): the classifier has K + 2 rows, the K classes then the objectness pair [object,
  background], which is the layout of lvisctl's Seesaw loss, so the rows are kept as they are; the config
  gets ``cls_loss: seesaw`` and mmdet's ``NormedLinear`` classifier (``cls_loss_args.normed_temperature``,
  20 in those configs), and the loss's ``cum_samples`` buffer is carried over.
* class-agnostic box regression or mask (4 box outputs / 1 mask channel) becomes class-specific by
  repeating the same weights for every class: identical outputs, no model change.
* BGR input (detectron2's MSRA R-50, mmdet caffe style): the first conv's input channels are flipped and the
  pixel mean / std are converted to RGB in 0..1, so lvisctl's RGB 0..1 images give the same activations.

Everything else (pixel mean/std, RoIAlign ``aligned`` and sampling ratio, anchor rounding, the stride of
MSRA blocks, depth / width of trunk and heads) goes into config overrides (``MappedModel.overrides``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lvisctl.checkpoint_import.categories import SourceClasses, default_source_classes

# either RoI-head layout: the flat one these maps write (box_head.) and the model's (box.head.); Seesaw's
# per-class sample counts follow the classes too
_CLASS_KEY = re.compile(
    r".*((box(_|\.)head\.predictor\.(cls_score|bbox_pred)|mask(_|\.)head\.predictor)\.(weight|bias)"
    r"|cls_loss\.cum_samples)"
)


def is_class_key(key: str, own: Tensor) -> bool:
    """A weight whose shape depends on the classes (class-agnostic box outputs, 4 rows, do not)."""
    if not _CLASS_KEY.fullmatch(key):
        return False
    return not (".bbox_pred." in key and own.shape[0] == 4)


FRAMEWORKS = ("torchvision", "mmdet", "detectron2")
# ImageNet statistics in 0..255 (torchvision / mmdet pytorch style) and detectron2's MSRA BGR mean
RGB_MEAN_255 = (123.675, 116.28, 103.53)
RGB_STD_255 = (58.395, 57.12, 57.375)
MSRA_BGR_MEAN_255 = (103.53, 116.28, 123.675)


@dataclass
class MappedModel:
    framework: str
    tensors: dict[str, Tensor]  # lvisctl name -> converted tensor
    used: set[str]  # source keys consumed
    overrides: dict[str, Any]  # dotted config key -> value
    classes: SourceClasses
    notes: list[str] = field(default_factory=list)


Rule = tuple[str, str]


def _rename(keys: list[str], rules: list[Rule]) -> dict[str, str]:
    """source key -> lvisctl key by the first matching ``(regex, replacement)``; unmatched keys left out."""
    out = {}
    compiled = [(re.compile(p), r) for p, r in rules]
    for key in keys:
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                out[key] = pattern.sub(repl, key)
                break
    return out


def _apply(state: dict[str, Tensor], rules: list[Rule]) -> tuple[dict[str, Tensor], set[str]]:
    names = _rename(list(state), rules)
    return {new: state[old] for old, new in names.items()}, set(names)


# ------------------------------------------------------------------------------------------ conversions
def bg_last_to_first(t: Tensor) -> Tensor:
    """Classifier rows [fg_1..fg_K, bg] -> [bg, fg_1..fg_K]."""
    return torch.cat([t[-1:], t[:-1]])


def with_bg_slot(t: Tensor, group: int, num_classes: int) -> Tensor:
    """Class-specific rows without a background slot ([K * group, ...]) -> [(K + 1) * group, ...] with a
    zero slot first; a class-agnostic [group, ...] is repeated for the K + 1 slots (same output per class)."""
    if t.shape[0] == group:
        return t.repeat(num_classes + 1, *([1] * (t.dim() - 1)))
    return torch.cat([torch.zeros_like(t[:group]), t])


def flip_input_channels(conv_weight: Tensor) -> Tensor:
    """First conv of a BGR model -> the same conv for RGB input."""
    if conv_weight.dim() != 4 or conv_weight.shape[1] != 3:  # a damaged file: said, not a traceback
        raise ValueError(f"stem conv weight of shape {tuple(conv_weight.shape)}, expected [out, 3, kh, kw]")
    return conv_weight.flip(1)


def pixel_overrides(mean_255: tuple[float, ...], std_255: tuple[float, ...], bgr: bool) -> dict[str, Any]:
    """Pixel statistics in 0..255 (channel order of the source) -> lvisctl's RGB 0..1 ``pixel_mean/std``."""
    mean, std = list(mean_255), list(std_255)
    if bgr:
        mean, std = mean[::-1], std[::-1]
    return {"model.pixel_mean": [m / 255 for m in mean], "model.pixel_std": [s / 255 for s in std]}


def fold_bn(
    weight: Tensor, bias: Tensor | None, bn: dict[str, Tensor], eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """conv (+ bias) followed by an eval-mode BatchNorm -> one conv with bias (exact up to rounding)."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    b = bias if bias is not None else torch.zeros_like(bn["bias"])
    return weight * scale.reshape(shape), (b - bn["running_mean"]) * scale + bn["bias"]


# ------------------------------------------------------------------------------------------ torchvision
_TV_RULES: list[Rule] = [
    (r"backbone\.body\.conv1\.(.*)", r"backbone.body.stem.conv1.\1"),
    (r"backbone\.body\.bn1\.(.*)", r"backbone.body.stem.bn1.\1"),
    (r"backbone\.body\.layer([1-4])\.(.*)", lambda m: f"backbone.body.stages.{int(m[1]) - 1}.{m[2]}"),  # type: ignore[list-item]
    (r"backbone\.fpn\.(.*)", r"backbone.fpn.\1"),
    (r"rpn\.head\.(.*)", r"rpn.head.\1"),
    (r"roi_heads\.box_head\.(fc6|fc7)\.(.*)", r"roi_heads.box_head.mlp.\1.\2"),
    (r"roi_heads\.box_predictor\.(.*)", r"roi_heads.box_head.predictor.\1"),
    (
        r"roi_heads\.mask_head\.([0-9]+)\.0\.(weight|bias)",
        lambda m: f"roi_heads.mask_head.convs.{2 * int(m[1])}.{m[2]}",
    ),  # type: ignore[list-item]
    (
        r"roi_heads\.mask_head\.mask_fcn([0-9]+)\.(.*)",
        lambda m: f"roi_heads.mask_head.convs.{2 * (int(m[1]) - 1)}.{m[2]}",
    ),  # type: ignore[list-item]
    (r"roi_heads\.mask_predictor\.conv5_mask\.(.*)", r"roi_heads.mask_head.deconv.\1"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(.*)", r"roi_heads.mask_head.predictor.\1"),
]


def _is_tv_v2(state: dict[str, Tensor]) -> bool:
    return any(k.startswith("roi_heads.box_head.0.") for k in state)


def map_torchvision(state: dict[str, Tensor], **_: Any) -> MappedModel:
    """``maskrcnn_resnet50_fpn`` (v1) and ``maskrcnn_resnet50_fpn_v2`` state dicts (91 COCO slots)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if _is_tv_v2(state):
        return _map_torchvision_v2(state)
    tensors, used = _apply(state, _TV_RULES)
    num = tensors["roi_heads.box_head.predictor.cls_score.weight"].shape[0] - 1
    classes = _torchvision_classes(num)
    return MappedModel("torchvision", tensors, used, {"model.rpn.anchor_round": True}, classes)


def _torchvision_classes(num: int) -> SourceClasses:
    if num == 90:
        return SourceClasses(
            90, tuple(range(1, 91)), None, "COCO (torchvision's 91 slots: category id = index)"
        )
    # torchvision files carry neither ids nor names: only its COCO model's slots are known (= COCO ids).
    # Assuming id = index for any other count would keep a classifier of unknown classes: re-initialised.
    return SourceClasses(num, None, None, f"{num} classes of unknown ids (torchvision, not its COCO slots)")


def _map_torchvision_v2(state: dict[str, Tensor]) -> MappedModel:
    """v2: BatchNorm after the FPN, box-head and mask-head convs is folded into the convs (exact in eval);
    the box head is 4 convs + 1 fc (``model.roi_heads.box_convs: 4``)."""
    tensors, used = _apply(
        state,
        [
            (r"backbone\.body\.conv1\.(.*)", r"backbone.body.stem.conv1.\1"),
            (r"backbone\.body\.bn1\.(.*)", r"backbone.body.stem.bn1.\1"),
            (r"backbone\.body\.layer([1-4])\.(.*)", lambda m: f"backbone.body.stages.{int(m[1]) - 1}.{m[2]}"),  # type: ignore[list-item]
            (r"rpn\.head\.(.*)", r"rpn.head.\1"),
            (r"roi_heads\.box_predictor\.(.*)", r"roi_heads.box_head.predictor.\1"),
            (r"roi_heads\.mask_predictor\.conv5_mask\.(.*)", r"roi_heads.mask_head.deconv.\1"),
            (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(.*)", r"roi_heads.mask_head.predictor.\1"),
        ],
    )

    def fold(prefix: str, target: str) -> None:
        bn = {n: state[f"{prefix}.1.{n}"] for n in ("weight", "bias", "running_mean", "running_var")}
        w, b = fold_bn(state[f"{prefix}.0.weight"], state.get(f"{prefix}.0.bias"), bn)
        tensors[f"{target}.weight"], tensors[f"{target}.bias"] = w, b
        used.update(k for k in state if k.startswith(prefix + "."))

    for kind in ("inner_blocks", "layer_blocks"):
        for i in range(4):
            fold(f"backbone.fpn.{kind}.{i}", f"backbone.fpn.{kind}.{i}.0")
    box_convs = sorted(
        {int(k.split(".")[2]) for k in state if re.fullmatch(r"roi_heads\.box_head\.\d+\.1\.running_var", k)}
    )
    for i in box_convs:
        fold(f"roi_heads.box_head.{i}", f"roi_heads.box_head.mlp.convs.{i}")
    fc_index = len(box_convs) + 1  # [convs..., Flatten, Linear, ReLU]
    for name in ("weight", "bias"):
        key = f"roi_heads.box_head.{fc_index}.{name}"
        tensors[f"roi_heads.box_head.mlp.fc.{name}"] = state[key]
        used.add(key)
    mask_convs = sorted(
        {int(k.split(".")[2]) for k in state if re.match(r"roi_heads\.mask_head\.\d+\.0\.", k)}
    )
    for i in mask_convs:
        fold(f"roi_heads.mask_head.{i}", f"roi_heads.mask_head.convs.{2 * i}")
    num = tensors["roi_heads.box_head.predictor.cls_score.weight"].shape[0] - 1
    notes = ["torchvision v2: BatchNorm of the FPN, box-head and mask-head convs folded into the convs"]
    overrides = {"model.rpn.anchor_round": True, "model.roi_heads.box_convs": len(box_convs)}
    return MappedModel("torchvision", tensors, used, overrides, _torchvision_classes(num), notes)


# ------------------------------------------------------------------------------------------ mmdet
_MM_RULES: list[Rule] = [
    (r"backbone\.conv1\.(.*)", r"backbone.body.stem.conv1.\1"),
    (r"backbone\.bn1\.(.*)", r"backbone.body.stem.bn1.\1"),
    (r"backbone\.layer([1-4])\.(.*)", lambda m: f"backbone.body.stages.{int(m[1]) - 1}.{m[2]}"),  # type: ignore[list-item]
    (r"neck\.lateral_convs\.([0-3])\.conv\.(.*)", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"neck\.fpn_convs\.([0-3])\.conv\.(.*)", r"backbone.fpn.layer_blocks.\1.0.\2"),
    (r"rpn_head\.rpn_conv\.(.*)", r"rpn.head.conv.0.0.\1"),
    (r"rpn_head\.rpn_cls\.(.*)", r"rpn.head.cls_logits.\1"),
    (r"rpn_head\.rpn_reg\.(.*)", r"rpn.head.bbox_pred.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.0\.(.*)", r"roi_heads.box_head.mlp.fc6.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.1\.(.*)", r"roi_heads.box_head.mlp.fc7.\1"),
    (
        r"roi_head\.mask_head\.convs\.([0-9]+)\.conv\.(.*)",
        lambda m: f"roi_heads.mask_head.convs.{2 * int(m[1])}.{m[2]}",
    ),  # type: ignore[list-item]
    (r"roi_head\.mask_head\.upsample\.(.*)", r"roi_heads.mask_head.deconv.\1"),
]


def map_mmdet(state: dict[str, Tensor], meta: dict[str, Any] | None = None, **_: Any) -> MappedModel:
    """mmdet 3.x Mask R-CNN (``state_dict`` + ``meta``): R-50/R-101/X-101 FPN, pytorch or caffe style."""
    if "roi_head.bbox_head.0.fc_cls.weight" in state:
        return _map_mmdet_htc(state, meta)
    tensors, used = _apply(state, _MM_RULES)
    k, seesaw = _mmdet_classifier(state, "roi_head.bbox_head", "roi_heads", tensors, used)
    for name in ("weight", "bias"):
        reg = state[f"roi_head.bbox_head.fc_reg.{name}"]
        tensors[f"roi_heads.box_head.predictor.bbox_pred.{name}"] = with_bg_slot(reg, 4, k)
        logits = state[f"roi_head.mask_head.conv_logits.{name}"]
        tensors[f"roi_heads.mask_head.predictor.{name}"] = with_bg_slot(logits, 1, k)
    used |= {f"roi_head.bbox_head.{n}.{p}" for n in ("fc_cls", "fc_reg") for p in ("weight", "bias")}
    used |= {f"roi_head.mask_head.conv_logits.{p}" for p in ("weight", "bias")}
    notes, overrides = _mmdet_conventions(tensors, meta or {})
    if seesaw:
        _seesaw_config(meta or {}, overrides, notes)
    names = _mmdet_class_names(meta or {})
    classes = default_source_classes(k, names if names and len(names) == k else None)
    return MappedModel("mmdet", tensors, used, overrides, classes, notes)


def _mmdet_classifier(
    state: dict[str, Tensor], box: str, out: str, tensors: dict[str, Tensor], used: set[str]
) -> tuple[int, bool]:
    """The classifier of mmdet box head ``box`` into lvisctl head ``out``; (K, whether it is Seesaw's).

    Seesaw's K + 2 rows (K classes, then [object, background]) are told from the K + 1 rows of a softmax
    head by the class-specific outputs (box regression 4K rows, mask logits K channels); they are kept in
    place, lvisctl's Seesaw loss has mmdet's layout. A softmax head's background row moves first.
    """
    weight, bias = state[f"{box}.fc_cls.weight"], state[f"{box}.fc_cls.bias"]
    rows = weight.shape[0]
    reg_rows = state[f"{box}.fc_reg.weight"].shape[0]
    mask = box.replace("bbox_head", "mask_head") + ".conv_logits.weight"
    mask_channels = state[mask].shape[0] if mask in state else 0
    # K from the class-specific outputs (class-agnostic ones, 4 box rows / 1 mask channel, say nothing)
    per_class = [n for n, agnostic in ((reg_rows // 4, 1), (mask_channels, 1)) if n > agnostic]
    seesaw = rows - 2 in per_class
    predictor = f"{out}.box_head.predictor.cls_score"
    if seesaw:
        tensors[f"{predictor}.weight"], tensors[f"{predictor}.bias"] = weight, bias
        k = rows - 2
        loss_key = f"{box}.loss_cls.cum_samples"
        if loss_key in state:
            tensors[f"{out}.cls_loss.cum_samples"] = state[loss_key].float()
            used.add(loss_key)
        else:  # not saved by older mmdet: the counts start again from zero (training only reads them)
            tensors[f"{out}.cls_loss.cum_samples"] = torch.zeros(k + 1)
    else:
        tensors[f"{predictor}.weight"] = bg_last_to_first(weight)
        tensors[f"{predictor}.bias"] = bg_last_to_first(bias)
        k = rows - 1
    return k, seesaw


def _seesaw_config(meta: dict[str, Any], overrides: dict[str, Any], notes: list[str]) -> None:
    """``cls_loss: seesaw`` and the normalised classifier of mmdet's Seesaw configs (``NormedLinear``,
    ``tempearture`` as mmdet spells it); without config text the zoo's NormedLinear(20) is assumed."""
    cfg_text = next((meta[k] for k in ("cfg", "config") if isinstance(meta.get(k), str)), "")
    temperature = 20.0
    if "NormedLinear" in cfg_text:
        m = re.search(r"tempea?rature\s*=\s*([0-9.eE+-]+)", cfg_text)
        temperature = float(m[1]) if m else 20.0
    elif cfg_text:
        temperature = 0.0  # a plain linear classifier
    else:
        notes.append("no config text: the Seesaw classifier is taken as mmdet zoo's NormedLinear(20)")
    overrides["model.roi_heads.cls_loss"] = "seesaw"
    overrides["model.roi_heads.cls_loss_args.normed_temperature"] = temperature
    notes.append(
        "mmdet Seesaw classifier (K + 2: classes, then objectness) kept in place: cls_loss seesaw"
        + (f", NormedLinear temperature {temperature:g}" if temperature else "")
    )


def _mmdet_conventions(tensors: dict[str, Tensor], meta: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Pixel statistics / channel order / block style from ``meta['cfg']``; mmdet's RoIAlign and anchors."""
    # mmdet 3.x keeps the config text in meta["cfg"], 2.x (whose zoo files 3.x still serves) in meta["config"]
    cfg_text = next((meta[k] for k in ("cfg", "config") if isinstance(meta.get(k), str)), "")
    mean, std, bgr_to_rgb = _mmdet_preprocess(cfg_text)
    notes = []
    caffe = "style='caffe'" in cfg_text or 'style="caffe"' in cfg_text
    if not bgr_to_rgb:  # the weights expect BGR (caffe style): flip the first conv, statistics to RGB
        stem = "backbone.body.stem.conv1.weight"
        tensors[stem] = flip_input_channels(tensors[stem])
        notes.append("mmdet data_preprocessor bgr_to_rgb=False: first conv flipped to RGB input")
    overrides: dict[str, Any] = {
        **pixel_overrides(mean, std, bgr=not bgr_to_rgb),
        "model.rpn.anchor_round": False,
        "model.roi_heads.aligned": True,
        "model.roi_heads.sampling_ratio": 0,
        "model.backbone.stride_in_1x1": caffe,
    }
    return notes, overrides


_HTC_RULES: list[Rule] = [
    (r"roi_head\.bbox_head\.(\d+)\.shared_fcs\.0\.(.*)", r"roi_heads.stages.\1.box_head.mlp.fc6.\2"),
    (r"roi_head\.bbox_head\.(\d+)\.shared_fcs\.1\.(.*)", r"roi_heads.stages.\1.box_head.mlp.fc7.\2"),
    (
        r"roi_head\.mask_head\.(\d+)\.convs\.(\d+)\.conv\.(.*)",
        lambda m: f"roi_heads.stages.{m[1]}.mask_head.convs.{2 * int(m[2])}.{m[3]}",
    ),  # type: ignore[list-item]
    (r"roi_head\.mask_head\.(\d+)\.upsample\.(.*)", r"roi_heads.stages.\1.mask_head.deconv.\2"),
    (r"roi_head\.mask_head\.(\d+)\.conv_res\.conv\.(.*)", r"roi_heads.stages.\1.mask_head.conv_res.0.\2"),
]


def _map_mmdet_htc(state: dict[str, Tensor], meta: dict[str, Any] | None) -> MappedModel:
    """mmdet HTC (``roi_head.bbox_head.<stage>`` / ``mask_head.<stage>``) -> lvisctl's ``roi_heads.type: htc``
    (``roi_heads.stages.<stage>``). lvisctl's HTC has no semantic branch: a checkpoint with one loads
    everything else, reports the semantic weights unused and says that its outputs will differ."""
    tensors, used = _apply(state, _MM_RULES[:8] + _HTC_RULES)
    stages = sorted(
        {int(k.split(".")[2]) for k in state if re.fullmatch(r"roi_head\.bbox_head\.\d+\.fc_cls\.weight", k)}
    )
    agnostic = state["roi_head.bbox_head.0.fc_reg.weight"].shape[0] == 4
    seesaw = False
    for s in stages:
        box, mask, out = f"roi_head.bbox_head.{s}", f"roi_head.mask_head.{s}", f"roi_heads.stages.{s}"
        k, seesaw = _mmdet_classifier(state, box, out, tensors, used)
        for name in ("weight", "bias"):
            reg = state[f"{box}.fc_reg.{name}"]
            tensors[f"{out}.box_head.predictor.bbox_pred.{name}"] = (
                reg if agnostic else with_bg_slot(reg, 4, k)
            )
            tensors[f"{out}.mask_head.predictor.{name}"] = with_bg_slot(
                state[f"{mask}.conv_logits.{name}"], 1, k
            )
            used |= {f"{box}.fc_cls.{name}", f"{box}.fc_reg.{name}", f"{mask}.conv_logits.{name}"}
    notes, overrides = _mmdet_conventions(tensors, meta or {})
    if seesaw:
        _seesaw_config(meta or {}, overrides, notes)
    overrides.update({"model.roi_heads.type": "htc", "model.roi_heads.cascade.class_agnostic": agnostic})
    # the cascade's own RoIAlign / loss / test-mask keys, as mmdet's HTC (config and simple_test) sets them
    overrides.update(
        {
            "model.roi_heads.cascade.aligned": True,
            "model.roi_heads.cascade.sampling_ratio": 0,
            "model.roi_heads.cascade.smooth_l1_beta": 1.0,
            "model.roi_heads.cascade.test_mask": "mean",
        }
    )
    if len(stages) != 3:
        overrides["model.roi_heads.cascade.iou_thresholds"] = [0.5, 0.6, 0.7][: len(stages)]
    if any(key.startswith("roi_head.semantic_head.") for key in state):
        notes.append(
            "HTC semantic branch: lvisctl's HTC has none; its weights are unused and outputs will differ"
        )
    names = _mmdet_class_names(meta or {})
    classes = default_source_classes(k, names if names and len(names) == k else None)
    return MappedModel("mmdet", tensors, used, overrides, classes, notes)


def _floats(text: str, key: str) -> tuple[float, ...] | None:
    m = re.search(rf"\b{key}\s*=\s*\[([^\]]*)\]", text)
    if not m:
        return None
    try:
        values = tuple(float(v) for v in m[1].split(",") if v.strip())
    except ValueError:
        return None
    return values if len(values) == 3 else None


def _mmdet_preprocess(cfg_text: str) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """mean / std / bgr_to_rgb of the model's ``data_preprocessor`` read from ``meta['cfg']`` as text
    (never executed); mmdet's defaults for Mask R-CNN when the checkpoint has no config."""
    mean = _floats(cfg_text, "mean") or RGB_MEAN_255
    std = _floats(cfg_text, "std") or RGB_STD_255
    m = re.search(r"\b(?:bgr_)?to_rgb\s*=\s*(True|False)", cfg_text)  # 3.x bgr_to_rgb, 2.x to_rgb
    return mean, std, (m is None or m[1] == "True")


def _mmdet_class_names(meta: dict[str, Any]) -> tuple[str, ...] | None:
    dataset_meta = meta.get("dataset_meta")
    classes = (
        dataset_meta.get("classes") if isinstance(dataset_meta, dict) else meta.get("CLASSES")
    )  # 3.x / 2.x
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    return None


# ------------------------------------------------------------------------------------------ detectron2
_D2_RULES: list[Rule] = [
    (r"backbone\.bottom_up\.stem\.conv1\.weight", r"backbone.body.stem.conv1.weight"),
    (r"backbone\.bottom_up\.stem\.conv1\.norm\.(.*)", r"backbone.body.stem.bn1.\1"),
    (
        r"backbone\.bottom_up\.res([2-5])\.([0-9]+)\.conv([1-3])\.weight",
        lambda m: f"backbone.body.stages.{int(m[1]) - 2}.{m[2]}.conv{m[3]}.weight",
    ),  # type: ignore[list-item]
    (
        r"backbone\.bottom_up\.res([2-5])\.([0-9]+)\.conv([1-3])\.norm\.(.*)",
        lambda m: f"backbone.body.stages.{int(m[1]) - 2}.{m[2]}.bn{m[3]}.{m[4]}",
    ),  # type: ignore[list-item]
    (
        r"backbone\.bottom_up\.res([2-5])\.([0-9]+)\.shortcut\.weight",
        lambda m: f"backbone.body.stages.{int(m[1]) - 2}.{m[2]}.downsample.0.weight",
    ),  # type: ignore[list-item]
    (
        r"backbone\.bottom_up\.res([2-5])\.([0-9]+)\.shortcut\.norm\.(.*)",
        lambda m: f"backbone.body.stages.{int(m[1]) - 2}.{m[2]}.downsample.1.{m[3]}",
    ),  # type: ignore[list-item]
    (r"backbone\.fpn_lateral([2-5])\.(.*)", lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}"),  # type: ignore[list-item]
    (r"backbone\.fpn_output([2-5])\.(.*)", lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}"),  # type: ignore[list-item]
    (r"proposal_generator\.rpn_head\.conv\.(.*)", r"rpn.head.conv.0.0.\1"),
    (r"proposal_generator\.rpn_head\.objectness_logits\.(.*)", r"rpn.head.cls_logits.\1"),
    (r"proposal_generator\.rpn_head\.anchor_deltas\.(.*)", r"rpn.head.bbox_pred.\1"),
    (r"roi_heads\.box_head\.fc1\.(.*)", r"roi_heads.box_head.mlp.fc6.\1"),
    (r"roi_heads\.box_head\.fc2\.(.*)", r"roi_heads.box_head.mlp.fc7.\1"),
    (
        r"roi_heads\.mask_head\.mask_fcn([0-9]+)\.(.*)",
        lambda m: f"roi_heads.mask_head.convs.{2 * (int(m[1]) - 1)}.{m[2]}",
    ),  # type: ignore[list-item]
    (r"roi_heads\.mask_head\.deconv\.(.*)", r"roi_heads.mask_head.deconv.\1"),
]


def map_detectron2(
    state: dict[str, Tensor], *, input_format: str | None = None, stride_in_1x1: bool | None = None, **_: Any
) -> MappedModel:
    """detectron2 Mask R-CNN R-50/R-101-FPN (``model`` of numpy arrays or tensors).

    detectron2's model zoo R-50/R-101 start from MSRA weights: BGR 0..255 input with mean (103.53, 116.28,
    123.675) and std 1, stride 2 in the 1x1 conv; ``input_format="RGB"`` / ``stride_in_1x1=False`` for
    models built from torchvision-style trunks. ``pixel_mean`` / ``pixel_std`` stored in the checkpoint win.
    """
    tensors, used = _apply(state, _D2_RULES)
    cls_w, cls_b = (
        state["roi_heads.box_predictor.cls_score.weight"],
        state["roi_heads.box_predictor.cls_score.bias"],
    )
    k = cls_w.shape[0] - 1
    tensors["roi_heads.box_head.predictor.cls_score.weight"] = bg_last_to_first(cls_w)
    tensors["roi_heads.box_head.predictor.cls_score.bias"] = bg_last_to_first(cls_b)
    for name in ("weight", "bias"):
        reg = state[f"roi_heads.box_predictor.bbox_pred.{name}"]
        tensors[f"roi_heads.box_head.predictor.bbox_pred.{name}"] = with_bg_slot(reg, 4, k)
        logits = state[f"roi_heads.mask_head.predictor.{name}"]
        tensors[f"roi_heads.mask_head.predictor.{name}"] = with_bg_slot(logits, 1, k)
        used |= {f"roi_heads.box_predictor.{n}.{name}" for n in ("cls_score", "bbox_pred")}
        used.add(f"roi_heads.mask_head.predictor.{name}")
    bgr = (input_format or "BGR").upper() == "BGR"
    mean = tuple(float(v) for v in state["pixel_mean"].flatten()) if "pixel_mean" in state else None
    std = tuple(float(v) for v in state["pixel_std"].flatten()) if "pixel_std" in state else None
    used |= {k_ for k_ in ("pixel_mean", "pixel_std") if k_ in state}
    if mean is None:
        mean = MSRA_BGR_MEAN_255 if bgr else RGB_MEAN_255
    if std is None:
        std = (1.0, 1.0, 1.0) if bgr else RGB_STD_255
    notes = []
    if bgr:
        tensors["backbone.body.stem.conv1.weight"] = flip_input_channels(
            tensors["backbone.body.stem.conv1.weight"]
        )
        notes.append("detectron2 BGR input: first conv flipped to RGB input, pixel mean/std converted")
    overrides: dict[str, Any] = {
        **pixel_overrides(mean, std, bgr=bgr),
        "model.rpn.anchor_round": False,
        "model.roi_heads.aligned": True,
        "model.roi_heads.sampling_ratio": 0,
        "model.roi_heads.bbox_reg_weights": [10.0, 10.0, 5.0, 5.0],
        "model.backbone.stride_in_1x1": True if stride_in_1x1 is None else bool(stride_in_1x1),
    }
    return MappedModel("detectron2", tensors, used, overrides, default_source_classes(k), notes)


# ------------------------------------------------------------------------------------------ detection
MAPPERS: dict[str, Callable[..., MappedModel]] = {
    "torchvision": map_torchvision,
    "mmdet": map_mmdet,
    "detectron2": map_detectron2,
}
_SIGNATURES = {
    "torchvision": (
        "backbone.body.layer1.0.conv1.weight",
        "rpn.head.cls_logits.weight",
        "roi_heads.box_predictor.cls_score.weight",
    ),
    "mmdet": (
        "backbone.layer1.0.conv1.weight",
        "rpn_head.rpn_cls.weight",
        "roi_head.bbox_head.fc_cls.weight",
    ),
    "detectron2": (
        "backbone.bottom_up.res2.0.conv1.weight",
        "proposal_generator.rpn_head.objectness_logits.weight",
        "roi_heads.box_predictor.cls_score.weight",
    ),
}
# the parts each framework needs for a Mask R-CNN; a missing one is reported by name
REQUIRED = {
    "torchvision": ("roi_heads.mask_predictor.mask_fcn_logits.weight",),
    "mmdet": ("roi_head.bbox_head.fc_reg.weight", "roi_head.mask_head.conv_logits.weight"),
    "detectron2": ("roi_heads.box_predictor.bbox_pred.weight", "roi_heads.mask_head.predictor.weight"),
}


def _first_stage(key: str) -> str:
    """mmdet cascade / HTC heads (``roi_head.bbox_head.0.*``) are recognised by their first stage."""
    return re.sub(r"^roi_head\.(bbox_head|mask_head)\.0\.", r"roi_head.\1.", key)


def detect_framework(keys: set[str]) -> str | None:
    """The framework whose Mask R-CNN signature keys are all present (module./model. prefixes ignored)."""
    stripped = {_first_stage(k.removeprefix("module.")) for k in keys}
    for name, signature in _SIGNATURES.items():
        if all(s in stripped for s in signature):
            return name
    return None


def key_prefixes(keys: set[str], limit: int = 8) -> str:
    """'backbone.body (318), rpn.head (6), ...': the first two name parts of the keys, for errors."""
    counts: dict[str, int] = {}
    for k in keys:
        prefix = ".".join(k.split(".")[:2])
        counts[prefix] = counts.get(prefix, 0) + 1
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{p} ({n})" for p, n in items[:limit])
    return shown + (f", +{len(items) - limit} more" if len(items) > limit else "") if items else "none"
