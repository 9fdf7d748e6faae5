"""A tiny model (8-wide trunk, 4 categories) built from the real config and builders, its category
stats, training targets and two images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lvisctl.config import load_config
from lvisctl.data.categories import CategoryMap, CategoryStats
from lvisctl.modeling.build import build_model

K = 4


TINY = [
    "model.backbone.name=tiny",
    "model.backbone.weights=none",  # the tiny trunk has no ImageNet weights (a config may name some)
    "model.backbone.norm=bn",
    "model.backbone.freeze_at=0",
    "model.backbone.tiny_width=8",
    "model.fpn.out_channels=32",
    "model.rpn.anchor_sizes=[8,16,32,64,128]",
    "model.rpn.pre_nms_top_n_train=200",
    "model.rpn.post_nms_top_n_train=100",
    "model.rpn.pre_nms_top_n_test=100",
    "model.rpn.post_nms_top_n_test=50",
    "model.roi_heads.batch_size_per_image=64",
    "model.roi_heads.fc_dim=64",
    "model.mask_head.conv_dim=16",
    "model.mask_head.num_convs=2",
]


def make_stats(image_count=(50, 1, 30, 1), num_images=1000) -> CategoryStats:
    n = len(image_count)
    return CategoryStats(
        CategoryMap(range(10, 10 + n)),
        tuple(f"c{i}" for i in range(n)),
        np.array(image_count),
        np.array(image_count) * 2,
        tuple("f" for _ in range(n)),
        num_images,
    )


def tiny_model(*overrides: str):
    torch.manual_seed(0)
    return build_model(load_config(None, [*TINY, *overrides]), make_stats())


def target(h: int, w: int, loss_weight: float = 1.0) -> dict:
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 35:60, 20:50] = 1
    return {
        "boxes": torch.tensor([[10.0, 8, 40, 30], [20, 35, 50, 60]]),
        "labels": torch.tensor([1, 3]),
        "masks": masks,
        "ignore_boxes": torch.zeros(0, 4),
        "loss_weight": loss_weight,
    }


IMAGES = [torch.rand(3, 64, 70, generator=torch.Generator().manual_seed(1)), torch.rand(3, 70, 64)]


class FixedModel(nn.Module):
    """Answers in input coordinates like the real model: three detections per image, unsorted scores.

    Detection 0 (score 0.2) covers the whole input, detection 1 (0.9) the box [5, 3, 25, 30] with the
    left half of the input as its mask (probability 0.9), detection 2 (0.5) sticks out of the image.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []
        self.training_flags: list[bool] = []
        self.grad_enabled: list[bool] = []

    def forward(self, images):
        self.training_flags.append(self.training)
        self.grad_enabled.append(torch.is_grad_enabled())
        outputs = []
        for img in images:
            h, w = img.shape[-2:]
            self.seen.append((h, w))
            masks = torch.zeros((3, 1, h, w))
            masks[0] = 0.7
            masks[1, 0, :, : w // 2] = 0.9
            masks[2, 0, :2, :2] = 0.6
            outputs.append(
                {
                    "boxes": torch.tensor(
                        [[0.0, 0.0, w, h], [5.0, 3.0, 25.0, 30.0], [-4.0, -2.0, w + 10.0, 8.0]]
                    ),
                    "scores": torch.tensor([0.2, 0.9, 0.5]),
                    "labels": torch.tensor([1, 2, 3]),
                    "masks": masks,
                }
            )
        return outputs
