"""A content-dependent stand-in model and the chunked inference run on a few tiny images: what the
runner, resume and safety tests compare byte for byte."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from lvisctl.data.categories import CategoryMap
from lvisctl.inference.chunks import ImageItem
from lvisctl.inference.predictor import Predictor
from lvisctl.inference.results import split_paths
from lvisctl.inference.runner import InferenceOptions, run_inference

CMAP = CategoryMap([10, 20])


class ContentModel(nn.Module):
    """Deterministic detections computed from the pixels, so every image gives different results.

    Two detections per image: the bright half of the red channel as a mask, score = mean red value.
    """

    calls = 0

    def forward(self, images):
        ContentModel.calls += len(images)
        out = []
        for img in images:
            h, w = img.shape[-2:]
            red = img[0].mean()
            mask = (img[0] > 0.5).float()[None]
            out.append(
                {
                    "boxes": torch.tensor([[0.0, 0.0, w / 2, h / 2], [w / 4, h / 4, w, h]]),
                    "scores": torch.stack([red, 1 - red]),
                    "labels": torch.tensor([1, 2]),
                    "masks": torch.stack([mask, 1 - mask]),
                }
            )
        return out


def make_images(folder, n=5):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        array = (rng.random((12 + i, 16, 3)) * 255).astype(np.uint8)
        path = folder / f"{i}.png"
        Image.fromarray(array).save(path)
        items.append(ImageItem(image_id=100 + i, path=path))
    return items


def infer(items, out, partial, dist=None, **options):
    predictor = Predictor(ContentModel(), "cpu", scales=(8,))
    options = InferenceOptions(chunk_size=2, **options)
    return run_inference(predictor, items, CMAP, out, partial, fingerprint="fp", dist=dist, options=options)


def files_bytes(out) -> list[bytes]:
    """The bytes of the segm and bbox files of a run (what 'identical output' compares)."""
    return [p.read_bytes() for p in split_paths(out).values()]


OFF = dict(range_filter=False, rare_boost=False, soft_nms=False, mask_from_best_scale=False)
