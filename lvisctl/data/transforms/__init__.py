"""Training augmentations on tv_tensors samples, seeded per sample (see ``base``): Mosaic, rotation,
scale jitter, horizontal flip, and ``build_train_transforms`` from the ``augment:`` config section."""

from lvisctl.data.transforms.base import Sample, SampleSource, sample_generator, tight_boxes
from lvisctl.data.transforms.compose import Compose, build_train_transforms
from lvisctl.data.transforms.flip import RandomHorizontalFlip, hflip_sample
from lvisctl.data.transforms.mosaic import Mosaic, mosaic_samples
from lvisctl.data.transforms.rotate import RandomRotate, rotate_sample
from lvisctl.data.transforms.scale_jitter import ScaleJitter, resize_sample, short_side_size

__all__ = [
    "Compose",
    "Mosaic",
    "RandomHorizontalFlip",
    "RandomRotate",
    "Sample",
    "SampleSource",
    "ScaleJitter",
    "build_train_transforms",
    "hflip_sample",
    "mosaic_samples",
    "resize_sample",
    "rotate_sample",
    "sample_generator",
    "short_side_size",
    "tight_boxes",
]
