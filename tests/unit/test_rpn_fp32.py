"""Anchors and RPN proposal decoding stay float32 under autocast (mmdet and detectron2 do the same).

No GPU here: CPU autocast (bfloat16) applies the same dtype rule torchvision trips on under CUDA's fp16:
the features come out in the low-precision dtype and torchvision takes the anchors' dtype from them."""

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from lvisctl.modeling.build import build_rpn
from tests.helpers.engine_standins import real_tiny_config

SIZES = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]  # P2..P6 of an 800 x 1344 input


@pytest.fixture(scope="module")
def rpn():
    torch.manual_seed(0)
    return build_rpn(real_tiny_config().model.rpn, 16).eval()


def _inputs(dtype):
    g = torch.Generator().manual_seed(1)
    feats = {str(i): torch.randn((1, 16, h, w), generator=g).to(dtype) for i, (h, w) in enumerate(SIZES)}
    return ImageList(torch.zeros((1, 3, 800, 1344), dtype=dtype), [(800, 1344)]), feats


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_anchors_are_float32_and_exact_with_low_precision_features(rpn, low):
    images, feats = _inputs(torch.float32)
    ref = rpn.anchor_generator(images, list(feats.values()))[0]
    images_low, feats_low = _inputs(low)
    got = rpn.anchor_generator(images_low, list(feats_low.values()))[0]
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    # what torchvision's own generator gives: anchors of the far corner more than 1 px off in fp16
    plain = AnchorGenerator(rpn.anchor_generator.sizes, rpn.anchor_generator.aspect_ratios)
    assert plain(images_low, list(feats_low.values()))[0].dtype == low


def test_proposals_are_decoded_in_float32_under_autocast(rpn):
    images, feats = _inputs(torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = {k: torch.nn.functional.conv2d(v, torch.eye(16)[:, :, None, None]) for k, v in feats.items()}
        assert all(v.dtype == torch.bfloat16 for v in low.values())  # autocast's rule for convs
        objectness, deltas = rpn.head(list(low.values()))
        boxes, _ = rpn(images, low)
    assert {t.dtype for t in objectness + deltas} == {torch.float32}
    assert boxes[0].dtype == torch.float32 and boxes[0].shape[0] > 0
    # float32 coordinates resolve fractions of a pixel at the far side of the image
    assert (boxes[0] - boxes[0].floor()).unique().numel() > 100
