"""Prediction images for TensorBoard: masks and boxes are drawn where the detections are."""

import torch

from lvisctl.training.image_log import draw_detections


def test_drawn_mask_changes_pixels_under_it_only():
    image = torch.full((3, 32, 32), 0.5)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 8:16, 8:16] = True
    dets = {
        "boxes": torch.tensor([[8.0, 8.0, 16.0, 16.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([2]),
        "masks": mask,
    }
    out = draw_detections(image, dets, ["a", "b"], score_thresh=0.3, min_side=64)
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)  # enlarged x2
    plain = torch.full((3, 64, 64), 127, dtype=torch.uint8)
    assert (out[:, 20:28, 20:28] != plain[:, 20:28, 20:28]).any(dim=0).all()  # inside the mask
    assert torch.equal(out[:, 48:, 48:], plain[:, 48:, 48:])  # far from it
    low = draw_detections(image, {**dets, "scores": torch.tensor([0.1])}, ["a", "b"], score_thresh=0.3)
    assert torch.equal(low, torch.full_like(low, 127))  # below the threshold: nothing drawn
