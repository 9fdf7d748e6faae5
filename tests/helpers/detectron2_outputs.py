"""detectron2-shaped model outputs (Instances with pred_boxes, scores, classes, masks) without detectron2."""

from __future__ import annotations

import torch

from tests.helpers.tiny_run import CAT_IDS, SIZES


class FakeBoxes:
    def __init__(self, tensor):
        self.tensor = tensor


class FakeInstances:
    """What detectron2's ``Instances`` offers an evaluator: fields, ``has``, ``to``."""

    def __init__(self, **fields):
        self._fields = fields
        for k, v in fields.items():
            setattr(self, k, v)

    def has(self, name):
        return name in self._fields

    def to(self, _device):
        return self


def _outputs(perfect: bool):
    inputs, outputs = [], []
    for i, (h, w) in enumerate(SIZES, start=1):
        masks = torch.zeros((1, h, w), dtype=torch.bool)
        masks[0, 10:30, 10:30] = True
        cls = CAT_IDS.index(CAT_IDS[i - 1]) if perfect else (i % 3)  # contiguous 0..K-1
        box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
        inst = FakeInstances(
            pred_boxes=FakeBoxes(box),
            scores=torch.tensor([0.9]),
            pred_classes=torch.tensor([cls]),
            pred_masks=masks,
        )
        inputs.append({"image_id": i, "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs
