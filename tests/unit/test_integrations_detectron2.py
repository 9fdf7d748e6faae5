"""``LvisctlLVISEvaluator`` against detectron2's evaluator interface, with duck-typed fakes of its inputs
(detectron2 is not on the package registry)."""

import pytest

from lvisctl.integrations.detectron2 import D2_KEYS, LvisctlLVISEvaluator
from tests.helpers.detectron2_outputs import _outputs
from tests.helpers.tiny_run import make_lvis


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
