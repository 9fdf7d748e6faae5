"""Deformable RoI pooling: equals RoI-align with zero offsets, moves bins by gamma * offset * RoI size,
trains its offset predictor, and pools multi-level FPN features per RoI level."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from lvisctl.modeling.deform_roi_pool import DeformRoIPool, boxes_to_rois, deform_roi_align

ROIS = torch.tensor(
    [
        [0, 1.0, 2.0, 20.0, 30.0],
        [0, -6.0, -3.0, 10.0, 8.0],  # partly outside the map
        [1, 25.0, 20.0, 40.0, 40.0],  # beyond the 32 x 32 map (stride 1) on two sides
        [1, 3.2, 4.7, 3.9, 5.1],  # smaller than a pixel
        [0, 0.0, 0.0, 31.0, 31.0],
    ]
)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_zero_offsets_equal_roi_align(aligned, scale):
    torch.manual_seed(0)
    feature = torch.randn(2, 3, 32, 32)
    expected = roi_align(feature, ROIS, (7, 7), spatial_scale=scale, sampling_ratio=2, aligned=aligned)
    got = deform_roi_align(feature, ROIS, torch.zeros(5, 2, 7, 7), 7, scale, 2, 0.1, aligned)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(
        deform_roi_align(feature, ROIS, None, 7, scale, 2, 0.1, aligned), expected, atol=1e-5
    )


def test_offsets_shift_bins_by_gamma_times_roi_size():
    # feature value = x coordinate, so a bin's pooled value is the mean x of its samples
    feature = torch.arange(64.0).repeat(64, 1)[None, None]
    rois = torch.tensor([[0, 10.0, 10.0, 30.0, 50.0]])  # 20 wide, 40 high
    offsets = torch.zeros(1, 2, 2, 2)
    offsets[0, 0, 0, 1] = 1.0  # bin (row 0, col 1): dx = 1 -> + 0.1 * 20 = 2 px
    offsets[0, 1, 1, 0] = 1.0  # bin (row 1, col 0): dy only, x unchanged
    out = deform_roi_align(feature, rois, offsets, 2, 1.0, 2, 0.1, False)[0, 0]
    # bins are 10 px wide; samples at 10 + 2.5, 10 + 7.5 (col 0) and 20 + 2.5, 20 + 7.5 (col 1)
    assert torch.allclose(out, torch.tensor([[15.0, 27.0], [15.0, 25.0]]), atol=1e-4)
    offsets = torch.zeros(1, 2, 2, 2)
    offsets[0, 0] = -0.5  # every bin 0.1 * 20 * 0.5 = 1 px to the left
    out = deform_roi_align(feature, rois, offsets, 2, 1.0, 2, 0.1, False)[0, 0]
    assert torch.allclose(out, torch.tensor([[14.0, 24.0], [14.0, 24.0]]), atol=1e-4)


def _fpn(num_images=2, channels=4, size=64):
    torch.manual_seed(1)
    return [torch.randn(num_images, channels, size // s, size // s) for s in (4, 8, 16, 32)]


def test_module_at_init_equals_multilevel_roi_align():
    feats = _fpn()
    pool = DeformRoIPool(4, output_size=3, hidden_channels=16)
    boxes = [
        torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 60.0, 63.0]]),
        torch.tensor([[5.0, 5.0, 50.0, 40.0]]),
    ]
    levels = torch.tensor([0, 3, 1])
    got = pool(feats, boxes, levels=levels)
    rois = boxes_to_rois(boxes)
    for i, level in enumerate(levels.tolist()):
        stride = (4, 8, 16, 32)[level]
        ref = roi_align(feats[level], rois[i : i + 1], (3, 3), spatial_scale=1 / stride, sampling_ratio=2)
        assert torch.allclose(got[i : i + 1], ref, atol=1e-5)


def test_default_levels_match_torchvision_multiscale_roi_align():
    feats = _fpn(size=256)
    names = ["0", "1", "2", "3"]
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 10.0, 130.0, 140.0], [0.0, 0.0, 250.0, 250.0]])]
    reference = MultiScaleRoIAlign(names, 5, 2)(dict(zip(names, feats, strict=True)), boxes, [(256, 256)])
    pool = DeformRoIPool(4, output_size=5, hidden_channels=8)
    got = pool(dict(zip(names, feats, strict=True)), boxes, [(256, 256)])
    assert torch.allclose(got, reference, atol=1e-5)


def test_gradients_reach_the_offset_predictor():
    feats = [f.requires_grad_() for f in _fpn()]
    pool = DeformRoIPool(4, output_size=3, hidden_channels=16, per_level_offsets=True)
    rois = torch.tensor([[0, 2.0, 3.0, 40.0, 50.0], [1, 10.0, 10.0, 30.0, 25.0]])
    out = pool(feats, rois, levels=torch.tensor([0, 1]))
    (out**2).sum().backward()
    last_layers = [fc[-1] for fc in pool.offset_fcs]
    assert last_layers[0].weight.grad.abs().sum() > 0 and last_layers[1].weight.grad.abs().sum() > 0
    assert last_layers[2].weight.grad.abs().sum() == 0  # no RoI on level 2
    assert feats[0].grad.abs().sum() > 0
    # after a step the offsets are non-zero and the output moves away from plain RoI-align
    with torch.no_grad():
        for layer in last_layers:
            layer.weight -= 10.0 * layer.weight.grad
    moved = pool(feats, rois, levels=torch.tensor([0, 1]))
    assert not torch.allclose(moved, out, atol=1e-4)


def test_empty_rois_and_bad_levels():
    feats = _fpn()
    pool = DeformRoIPool(4, output_size=3, hidden_channels=8)
    out = pool(feats, torch.zeros(0, 5))
    assert out.shape == (0, 4, 3, 3)
    with pytest.raises(ValueError):
        pool(feats, torch.tensor([[0, 0.0, 0.0, 8.0, 8.0]]), levels=torch.tensor([4]))
    with pytest.raises(ValueError):
        deform_roi_align(feats[0], torch.zeros(1, 5), None, 3, 0.25, sampling_ratio=0)
