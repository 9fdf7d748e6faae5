"""Test-time augmentations as invertible transforms (the paper's TTA, section 3.3, runs each image as views).

An augmentation (registered on :data:`lvisctl.registry.TTA_AUGMENTATIONS`) looks at one image and returns
a :class:`Transform`: ``apply_image`` makes the view the model sees, and ``inverse()`` maps what the model
answered in the view (boxes, full masks, RoI-level masks) back to the original image. This is detectron2's
design (``DatasetMapperTTA`` builds one ``TransformList`` per view; ``GeneralizedRCNNWithTTA`` undoes each
with ``transform.inverse()``; ``detectron2/data/transforms/transform.py`` / fvcore's ``HFlipTransform``,
``ResizeTransform``, ``TransformList``) and what mmdet's ``TestTimeAug`` + ``*_mapping_back`` do.

A view of :class:`lvisctl.inference.tta.TTAPredictor` is a :class:`Resize` to one test scale followed by
zero or more of the others (``inference.tta.augmentations``, ``hflip`` also by ``inference.tta.flip``). The
pass code knows nothing of flips: a new geometric augmentation is one registered class here (``VFlip`` is
the proof: nothing else mentions it).

RoI-level masks (the model's ``M x M`` probabilities inside a box) have their own rule,
:meth:`Transform.apply_roi_masks`: the transformed mask inside the transformed box. A resize leaves them as
they are (the box scales with the image), a flip mirrors them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from lvisctl.registry import TTA_AUGMENTATIONS


class Transform:
    """A deterministic geometric map of one image (of a known size) and of what lies on it."""

    def apply_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[C, H, W]`` -> the transformed image."""
        raise NotImplementedError

    def apply_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """xyxy float ``[N, 4]`` in this image's pixels -> in the transformed image's."""
        raise NotImplementedError

    def apply_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Full-image masks ``[N, H, W]`` -> ``[N, H', W']``."""
        raise NotImplementedError

    def apply_roi_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """RoI-level masks ``[N, M, M]`` inside their boxes -> inside the transformed boxes."""
        raise NotImplementedError

    def inverse(self) -> Transform:
        raise NotImplementedError


@dataclass(frozen=True)
class ResizeTransform(Transform):
    """``(h, w)`` -> ``(new_h, new_w)``: bilinear for images and probabilities, nearest for binary masks."""

    h: int
    w: int
    new_h: int
    new_w: int

    def apply_image(self, image: torch.Tensor) -> torch.Tensor:
        # what lvisctl.inference.predictor.resize_image does (an unchanged size returns the input itself)
        if (self.new_h, self.new_w) == tuple(image.shape[-2:]):
            return image
        return F.interpolate(
            image[None], size=(self.new_h, self.new_w), mode="bilinear", align_corners=False
        )[0]

    def apply_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        # one multiplication by the four ratios, the same float operations the predictor always used
        ratio = torch.tensor(
            [self.new_w / self.w, self.new_h / self.h, self.new_w / self.w, self.new_h / self.h],
            device=boxes.device,
        )
        return boxes * ratio

    def apply_masks(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.shape[0] == 0:
            return masks.new_zeros((0, self.new_h, self.new_w))
        mode = "bilinear" if masks.is_floating_point() else "nearest"
        extra = {"align_corners": False} if mode == "bilinear" else {}
        out = F.interpolate(masks[:, None].float(), size=(self.new_h, self.new_w), mode=mode, **extra)[:, 0]
        return out if masks.is_floating_point() else out.to(masks.dtype)

    def apply_roi_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return masks  # the box scales with the image: the mask inside it is the same

    def inverse(self) -> Transform:
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w)


@dataclass(frozen=True)
class FlipTransform(Transform):
    """Mirror an image along one axis ``size`` pixels long: ``v -> size - v`` for that axis's coordinates.

    ``dim``: the image dimension it mirrors (-1: columns, x; -2: rows, y); a flip is its own inverse."""

    size: int
    dim: ClassVar[int]

    def apply_image(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(self.dim)

    def apply_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        lo, hi = (0, 2) if self.dim == -1 else (1, 3)  # the xyxy columns of this axis
        cols = list(boxes.unbind(1))
        cols[lo], cols[hi] = self.size - boxes[:, hi], self.size - boxes[:, lo]
        return torch.stack(cols, dim=1)

    def apply_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return masks.flip(self.dim)

    def apply_roi_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return masks.flip(self.dim)

    def inverse(self) -> Transform:
        return self


@dataclass(frozen=True)
class HFlipTransform(FlipTransform):
    """Mirror left-right an image ``size`` pixels wide: ``x -> size - x``."""

    dim = -1


@dataclass(frozen=True)
class VFlipTransform(FlipTransform):
    """Mirror top-bottom an image ``size`` pixels high: ``y -> size - y``."""

    dim = -2


@dataclass(frozen=True)
class TransformList(Transform):
    """Transforms in order; the inverse undoes them in reverse order (detectron2's ``TransformList``)."""

    transforms: tuple[Transform, ...]

    def _through(self, method: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` through each transform's ``method`` (``"apply_boxes"``, ...) in order."""
        for t in self.transforms:
            x = getattr(t, method)(x)
        return x

    def apply_image(self, image: torch.Tensor) -> torch.Tensor:
        return self._through("apply_image", image)

    def apply_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        return self._through("apply_boxes", boxes)

    def apply_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self._through("apply_masks", masks)

    def apply_roi_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self._through("apply_roi_masks", masks)

    def inverse(self) -> Transform:
        return TransformList(tuple(t.inverse() for t in reversed(self.transforms)))


# ------------------------------------------------------------------------------ augmentations
class TestAugmentation:
    """A test-time augmentation: ``get_transform(image)`` -> the :class:`Transform` of that image's view."""

    __test__ = False  # not a pytest test class, whatever its name

    name = ""

    def get_transform(self, image: torch.Tensor) -> Transform:
        raise NotImplementedError

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, Transform]:
        """``apply(image)``: the view and the transform that made it (invert with ``.inverse()``)."""
        t = self.get_transform(image)
        return t.apply_image(image), t


@TTA_AUGMENTATIONS.register(
    "resize", help="short side to the test scale, long side capped (every view's first step)"
)
@dataclass(frozen=True)
class Resize(TestAugmentation):
    """Short side to ``scale``, long side at most ``max_size`` (the predictor's ``resized_size`` rule)."""

    scale: int
    max_size: int
    name = "resize"

    def get_transform(self, image: torch.Tensor) -> Transform:
        from lvisctl.inference.predictor import resized_size

        h, w = (int(v) for v in image.shape[-2:])
        return ResizeTransform(h, w, *resized_size(h, w, self.scale, self.max_size))


class Flip(TestAugmentation):
    """The view mirrored by ``transform`` (a :class:`FlipTransform` class) across the image's extent."""

    transform: ClassVar[type[FlipTransform]]

    def get_transform(self, image: torch.Tensor) -> Transform:
        return self.transform(int(image.shape[self.transform.dim]))


@TTA_AUGMENTATIONS.register("hflip", help="the view mirrored left-right (inference.tta.flip adds it)")
class HFlip(Flip):
    name = "hflip"
    transform = HFlipTransform


@TTA_AUGMENTATIONS.register("vflip", help="the view mirrored top-bottom")
class VFlip(Flip):
    name = "vflip"
    transform = VFlipTransform


def augmentation(name: str) -> TestAugmentation:
    """The registered augmentation ``name`` (one that needs no argument), with the config key in errors."""
    from lvisctl.errors import LvisctlError

    if name not in TTA_AUGMENTATIONS or name == "resize":
        names = [n for n in TTA_AUGMENTATIONS.names() if n != "resize"]
        raise LvisctlError(
            f"inference.tta.augmentations: unknown augmentation {name!r} (choose from {', '.join(names)}; "
            "resizing is inference.tta.scales)"
        )
    return TTA_AUGMENTATIONS.get(name)()


@dataclass(frozen=True)
class View:
    """One pass of the TTA: resize to ``scale``, then ``augmentations`` in order (names: ``("hflip",)``)."""

    scale: int
    augmentations: tuple[str, ...] = ()

    def transforms(self, resize: Transform, resized: torch.Tensor) -> tuple[TransformList, torch.Tensor]:
        """The view's whole transform (``resize``, then each augmentation) and the augmented image made
        from ``resized`` (the image already resized by ``resize``)."""
        steps: list[Transform] = [resize]
        image = resized
        for name in self.augmentations:
            t = augmentation(name).get_transform(image)
            image = t.apply_image(image)
            steps.append(t)
        return TransformList(tuple(steps)), image


def views(scales: Sequence[int], extra: Sequence[str]) -> list[View]:
    """Every scale, plain and then with each extra augmentation (the order of the passes)."""
    return [View(int(s), aug) for s in scales for aug in [(), *((name,) for name in extra)]]
