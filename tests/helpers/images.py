"""Random-noise images (one generator shared by every caller, as the tests were written against)."""

from __future__ import annotations

import numpy as np

RNG = np.random.default_rng(0)


def _noise(h: int, w: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return (RNG.random(shape) * 255).astype(np.uint8)
