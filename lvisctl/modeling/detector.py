"""``LvisMaskRCNN``: backbone + FPN, RPN, RoI heads, with torchvision's detection calling convention.

``model(images, targets)``: ``images`` is a list of FloatTensor[3, H, W] in 0..1. Training returns a dict
of losses; eval returns per-image dicts ``boxes`` (xyxy, input-tensor coordinates), ``scores`` (the
classification score), ``labels`` (contiguous 1..K) and ``masks`` FloatTensor[N, 1, H, W] (probabilities
pasted at input size), or with ``model(images, paste_masks=False)`` ``mask_probs`` FloatTensor[N, 1, M, M]
(the RoI-level probabilities inside each box, which the predictor pastes at the original image size); with
Mask Scoring (``model.mask_head.mask_iou``) also ``mask_scores`` = cls score x
predicted mask IoU, the score of the masks only (boxes keep ``scores``, as MS R-CNN and mmdet).

The model never resizes: scales are chosen by augmentation and the predictor (TTA needs explicit scales).
Its only preprocessing is per-channel normalisation and zero padding of the batch to a multiple of 32,
like torchvision's ``GeneralizedRCNNTransform`` with resizing removed. Autocast (AMP) is the caller's.

Submodules (parameter-name prefixes, e.g. for ``train.freeze``; stage 2 freezes backbone, neck and RPN):

* ``backbone``: ``BackboneWithFPN`` = ``backbone.body`` (the trunk, C2-C5) + ``backbone.fpn`` (the neck,
  P2-P6), so ``backbone`` alone covers trunk + neck, and ``backbone.body`` / ``backbone.fpn`` each part;
* ``rpn``: the region proposal network (anchor generator + ``rpn.head``);
* ``roi_heads`` (``lvisctl/modeling/roi_heads.py``, ``model.roi_heads.type``): for ``standard`` the box
  branch (``roi_heads.box.extractor``, ``roi_heads.box.head``, ``roi_heads.box.cls_loss``), the mask branch
  (``roi_heads.mask.extractor``, ``roi_heads.mask.head``) and with Mask Scoring ``roi_heads.mask.scorer``;
  for ``cascade`` / ``htc`` the same names per stage, ``roi_heads.stages.{i}.box.head`` etc. The flat
  names of before (``roi_heads.box_head``, ``roi_heads.stages.2.mask_iou_head``) still work as freeze
  prefixes and state-dict keys (``roi_keys.py``).

Stage 2 of the paper is therefore ``train.freeze: [backbone, rpn]``. The trunk and the neck stay under
``backbone`` (torchvision's layout) so stage-1 checkpoints keep their parameter names.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image

from lvisctl.data.categories import CategoryStats
from lvisctl.modeling.fpn import BackboneWithFPN, roi_feature_maps
from lvisctl.modeling.mask_iou_head import MaskScorer
from lvisctl.modeling.roi_heads import RoIHeads
from lvisctl.modeling.rpn import WeightedRPN


class LvisMaskRCNN(nn.Module):
    def __init__(
        self,
        backbone: BackboneWithFPN,
        rpn: WeightedRPN,
        roi_heads: RoIHeads,
        category_stats: CategoryStats,
        pixel_mean: list[float],
        pixel_std: list[float],
        size_divisible: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        # kept on the model so a checkpoint (stats.to_dict()) can rebuild it without the training file
        self.category_stats = category_stats
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.size_divisible = size_divisible

    @property
    def num_classes(self) -> int:
        return self.category_stats.num_classes

    def preprocess(self, images: list[Tensor]) -> ImageList:
        """Normalise each image, then zero-pad the batch to a common size divisible by 32 (no resizing)."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        d = self.size_divisible
        h = -(-max(s[0] for s in sizes) // d) * d
        w = -(-max(s[1] for s in sizes) // d) * d
        batch = images[0].new_zeros((len(images), 3, h, w))
        for i, im in enumerate(images):
            batch[i, :, : im.shape[-2], : im.shape[-1]] = (im - self.pixel_mean) / self.pixel_std
        return ImageList(batch, sizes)

    def extract_features(self, images: list[Tensor]) -> tuple[OrderedDict[str, Tensor], ImageList]:
        """FPN features (``"0".."3"`` = P2..P5, ``"pool"`` = P6) and the padded batch, for TTA / re-use."""
        image_list = self.preprocess(images)
        return self.backbone(image_list.tensors), image_list

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        *,
        paste_masks: bool = True,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("LvisMaskRCNN: targets are required in training mode")
            _check_targets(targets)
        features, image_list = self.extract_features(images)
        proposals, rpn_losses = self.rpn(image_list, features, targets if self.training else None)
        results, roi_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets, paste_masks=paste_masks
        )
        if self.training:
            return {**rpn_losses, **roi_losses}
        return results

    def predict_masks_and_scores(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        labels: list[Tensor],
        scores: list[Tensor],
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """RoI-level mask probabilities [N_i, 1, M, M] for given boxes and labels, and with Mask Scoring
        each mask's score (the given classification ``scores`` x predicted mask IoU; None without it)."""
        probs, ious = self.roi_heads.predict_masks_and_iou(roi_feature_maps(features), boxes, labels)
        masks = [p[:, None] for p in probs]
        if ious is None:
            return masks, None
        return masks, [MaskScorer.rescore(s, iou) for s, iou in zip(scores, ious, strict=True)]

    def predict_masks(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        labels: list[Tensor],
        image_sizes: list[tuple[int, int]],
        paste: bool = True,
    ) -> list[Tensor]:
        """Run the mask head for given boxes (input coordinates) and contiguous labels (any RoI-head type;
        HTC: the last stage, after the earlier heads' information flow).

        Returns per image FloatTensor[N, 1, H, W] probabilities pasted at ``image_sizes`` (or, with
        ``paste=False``, the RoI-level [N, 1, M, M] probabilities, e.g. to average TTA scales before pasting).
        """
        probs = self.roi_heads.predict_masks(roi_feature_maps(features), boxes, labels)
        if not paste:
            return probs
        return [
            paste_masks_in_image(p, b, size, padding=1)
            for p, b, size in zip(probs, boxes, image_sizes, strict=True)
        ]


def _check_targets(targets: list[dict[str, Tensor]]) -> None:
    for i, t in enumerate(targets):
        for key in ("boxes", "labels", "masks"):
            if key not in t:
                raise ValueError(f"target {i} has no {key!r}")
        if not t["boxes"].is_floating_point() or t["labels"].dtype != torch.int64:
            raise TypeError(f"target {i}: boxes must be float and labels int64")
