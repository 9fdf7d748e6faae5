"""``LvisctlLVISEvaluator`` against detectron2's evaluator interface, with duck-typed fakes of its inputs
(detectron2 is not on the package registry)."""

import pytest
import torch

from lvisctl.integrations.detectron2 import D2_KEYS, LvisctlLVISEvaluator
from tests.integration.test_cli_tta_infer import CAT_IDS, SIZES, make_lvis


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


def test_same_keys_as_detectron2_and_perfect_predictions_score_100(tmp_path):
    gt = make_lvis(tmp_path)
    evaluator = LvisctlLVISEvaluator(str(gt))
    evaluator.reset()
    evaluator.process(*_outputs(perfect=True))
    results = evaluator.evaluate()
    assert list(results) == ["bbox", "segm"]
    assert all(list(results[t]) == list(D2_KEYS) for t in results)
    assert results["bbox"]["AP"] == pytest.approx(100.0) and results["segm"]["AP50"] == pytest.approx(100.0)


def test_wrong_classes_score_zero_and_reset_clears(tmp_path):
    gt = make_lvis(tmp_path)
    evaluator = LvisctlLVISEvaluator(str(gt), tasks=("bbox",))
    evaluator.process(*_outputs(perfect=True))
    evaluator.reset()
    evaluator.process(*_outputs(perfect=False))  # every image gets another image's class
    results = evaluator.evaluate()
    assert list(results) == ["bbox"] and results["bbox"]["AP"] == 0.0
