"""Epoch samplers for training: Repeat Factor Sampling (Gupta et al. 2019, the LVIS paper) and a plain one.

RFS: every class ``c`` gets ``r(c) = max(1, sqrt(t / f(c)))`` with ``f(c)`` the fraction of training
images containing ``c``; an image gets ``r(I) = max_{c in I} r(c)``. Each epoch an image appears
``floor(r(I))`` times plus once more with probability ``r(I) - floor(r(I))`` (stochastic rounding).

Determinism and resume. The epoch's index list depends only on ``(seed, epoch)``. The sampler yields
``(image_index, epoch, position)`` tuples, where ``position`` is the sample's place in the epoch's global
(all-rank) list; ``LvisTrainDataset`` seeds every random augmentation choice from ``(seed, epoch,
position)``. So a sample is the same whatever the number of DataLoader workers, and a run resumed at
sample ``k`` of an epoch (``set_epoch(epoch, start=k)`` or ``load_state_dict``) sees exactly the samples
and augmentations the uninterrupted run would have seen.

Choice: ``sampler.type`` picks a sampler registered in ``lvisctl.registry.SAMPLERS`` (``@SAMPLERS.register``
below, the only list of the names); each builds itself with ``from_config(cfg, factors, rank=, world_size=)``.

Distributed: the epoch list is padded by wrapping around to a multiple of ``world_size`` (as
``torch.utils.data.DistributedSampler`` does) and rank ``r`` takes positions ``r, r + W, r + 2W, ...``:
disjoint, equal-length shards. Padded positions are new positions, so their augmentations differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lvisctl.errors import LvisctlError
from lvisctl.registry import SAMPLERS


def repeat_factors(
    image_cat_ids: Sequence[set[int]], image_frequency: Mapping[int, float] | np.ndarray, t: float
) -> np.ndarray:
    """Per-image repeat factors ``r(I) = max(1, max_{c in I} sqrt(t / f(c)))``; 1.0 for class-less images.

    ``image_frequency`` is either a mapping ``category -> f(c)`` keyed like the sets, or an array in
    :class:`~lvisctl.data.categories.CategoryStats` order (entry ``i`` is contiguous class ``i + 1``, so the
    sets then hold contiguous indices ``1..K``).
    """
    if t < 0:
        raise ValueError(f"RFS threshold must be >= 0, got {t}")
    if isinstance(image_frequency, Mapping):
        freq = {int(c): float(f) for c, f in image_frequency.items()}
    else:
        arr = np.asarray(image_frequency, dtype=np.float64)
        freq = {i + 1: float(f) for i, f in enumerate(arr)}
    cat_factor = {c: max(1.0, float(np.sqrt(t / f))) if f > 0 else 1.0 for c, f in freq.items()}
    out = np.ones(len(image_cat_ids), dtype=np.float64)
    for i, cats in enumerate(image_cat_ids):
        if cats:
            out[i] = max(cat_factor[int(c)] for c in cats)
    return out


def image_frequency_from_sets(image_cat_ids: Sequence[set[int]]) -> dict[int, float]:
    """``f(c)``: the fraction of the given images that contain class ``c``."""
    counts: dict[int, int] = {}
    for cats in image_cat_ids:
        for c in cats:
            counts[int(c)] = counts.get(int(c), 0) + 1
    n = max(len(image_cat_ids), 1)
    return {c: k / n for c, k in counts.items()}


class EpochSampler:
    """Shared machinery: per-epoch index list from ``(seed, epoch)``, rank sharding, mid-epoch start.

    Iterating yields ``(image_index, epoch, position)`` tuples. ``len()`` is the number of samples this
    rank still yields in the current epoch (``num_samples - start``); ``num_samples`` is the full
    per-rank epoch length. Epoch lengths can differ between epochs under RFS (stochastic rounding).
    """

    def __init__(
        self, num_images: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if num_images < 1:
            raise LvisctlError("training set: no images to sample (is the annotation file empty?)")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.start = 0
        self._cache: tuple[int, np.ndarray] | None = None

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], factors: np.ndarray, *, rank: int = 0, world_size: int = 1
    ) -> EpochSampler:
        """A registered sampler from ``seed`` and ``sampler.shuffle`` over the images of repeat ``factors``
        (``sampled_from``: what its constructor takes of them)."""
        seed, shuffle = int(cfg.get("seed", 0)), bool(cfg["sampler"]["shuffle"])
        return cls(cls.sampled_from(factors), seed=seed, rank=rank, world_size=world_size, shuffle=shuffle)

    @staticmethod
    def sampled_from(factors: np.ndarray) -> Any:
        """The constructor's first argument, of the images' repeat factors: here the number of images."""
        return len(factors)

    # -- what differs between samplers ------------------------------------------------------------
    def _counts(self, rng: np.random.Generator) -> np.ndarray:
        """How many times each image appears this epoch."""
        return np.ones(self.num_images, dtype=np.int64)

    # -- epoch list ---------------------------------------------------------------------------------
    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The global (all-rank, unpadded) image index list of an epoch."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        # One generator per (seed, epoch): no dependence on earlier epochs or global RNG state.
        rng = np.random.default_rng([self.seed, epoch])
        counts = self._counts(rng)
        indices = np.repeat(np.arange(self.num_images, dtype=np.int64), counts)
        if self.shuffle:
            indices = rng.permutation(indices)
        self._cache = (epoch, indices)
        return indices

    @property
    def num_samples(self) -> int:
        """Samples per rank in the current epoch (after padding to a multiple of ``world_size``)."""
        total = len(self.epoch_indices())
        return -(-total // self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch; ``start`` skips the first ``start`` samples of this rank (exact resume)."""
        self.epoch = int(epoch)
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside 0..{self.num_samples} for epoch {epoch}")
        self.start = int(start)

    def __len__(self) -> int:
        return self.num_samples - self.start

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        indices = self.epoch_indices()
        total = len(indices)
        for j in range(self.start, self.num_samples):
            position = self.rank + j * self.world_size
            yield int(indices[position % total]), self.epoch, position

    # -- resume -------------------------------------------------------------------------------------
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """State to store in a checkpoint; ``consumed`` = samples this rank has used in the current epoch.

        The sampler cannot count consumption itself (the DataLoader prefetches ahead), so the trainer
        passes ``iteration_in_epoch * batch_size``; default is the current ``start``.
        """
        return {
            **self._identity(),
            "epoch": self.epoch,
            "start": self.start if consumed is None else int(consumed),
        }

    def _identity(self) -> dict[str, Any]:
        """What must match for a saved state to apply to this sampler."""
        return {
            "kind": type(self).__name__,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_images": self.num_images,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where ``state`` left off; refuses a state from a different setup."""
        for key, mine in self._identity().items():
            if state.get(key) != mine:
                raise LvisctlError(
                    f"checkpoint sampler state: {key} is {state.get(key)!r} but this run has {mine!r}; "
                    "exact resume needs the same data, seed, sampler and number of processes"
                )
        self.set_epoch(int(state["epoch"]), start=int(state["start"]))


@SAMPLERS.register("uniform", help="every image once per epoch")
class PlainSampler(EpochSampler):
    """Every image once per epoch (shuffled by ``(seed, epoch)``); the no-RFS baseline."""


@SAMPLERS.register("rfs", help="Repeat Factor Sampling")
class RepeatFactorSampler(EpochSampler):
    """Repeat Factor Sampling with epoch-level stochastic rounding (see the module docstring)."""

    @staticmethod
    def sampled_from(factors: np.ndarray) -> np.ndarray:
        return factors

    def __init__(
        self,
        repeat_factors: Sequence[float] | np.ndarray,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        factors = np.asarray(repeat_factors, dtype=np.float64)
        if factors.ndim != 1 or (factors < 1).any():
            raise ValueError("repeat factors must be a 1-d array of values >= 1")
        super().__init__(len(factors), seed=seed, rank=rank, world_size=world_size, shuffle=shuffle)
        self.repeat_factors = factors
        self._floor = np.floor(factors).astype(np.int64)
        self._frac = factors - self._floor

    def _counts(self, rng: np.random.Generator) -> np.ndarray:
        return self._floor + (rng.random(self.num_images) < self._frac)


# Seeds the extra-image stream as (seed, epoch, 1): independent of the base sampler's (seed, epoch) stream.
_EXTRA_STREAM = 1


class ExtraImagesSampler(EpochSampler):
    """Self-training's joint training (paper section 2.1): ``per_epoch`` extra images mixed into each epoch.

    Index layout (that of :class:`~lvisctl.data.dataset.ConcatTrainDataset`): ``0 .. num_base - 1`` are
    the base sampler's images (LVIS), ``num_base .. num_base + num_extra - 1`` the extra (pseudo-labelled)
    images. Epoch ``e``: the base sampler's list for ``e`` (RFS or plain, unchanged), plus
    ``min(per_epoch, num_extra)`` extra images drawn without replacement by a generator seeded by
    ``(seed, e, 1)``; the same generator then shuffles the combined list, which is sharded by rank like any
    epoch list. Everything depends on ``(seed, epoch)`` only, so exact mid-epoch resume still holds.
    """

    def __init__(self, base: EpochSampler, num_extra: int, per_epoch: int):
        if num_extra < 0 or per_epoch < 0:
            raise ValueError(f"num_extra ({num_extra}) and per_epoch ({per_epoch}) must be >= 0")
        super().__init__(
            base.num_images + num_extra,
            seed=base.seed,
            rank=base.rank,
            world_size=base.world_size,
            shuffle=base.shuffle,
        )
        self.base = base
        self.num_base = base.num_images
        self.num_extra = int(num_extra)
        self.per_epoch = min(int(per_epoch), self.num_extra)  # "all of them if fewer"

    def _draw(self, epoch: int) -> tuple[np.random.Generator, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, _EXTRA_STREAM])
        chosen = rng.choice(self.num_extra, size=self.per_epoch, replace=False)
        return rng, self.num_base + chosen.astype(np.int64)

    def extra_indices(self, epoch: int | None = None) -> np.ndarray:
        """The (dataset) indices of the extra images of an epoch, sorted."""
        return np.sort(self._draw(self.epoch if epoch is None else int(epoch))[1])

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng, extra = self._draw(epoch)
        if not self.shuffle:  # base list as it is, then the extra images in index order
            extra = np.sort(extra)
        indices = np.concatenate([self.base.epoch_indices(epoch), extra])
        if self.shuffle:
            indices = rng.permutation(indices)
        self._cache = (epoch, indices)
        return indices

    def _identity(self) -> dict[str, Any]:
        return {
            **super()._identity(),
            "base_kind": type(self.base).__name__,
            "num_extra": self.num_extra,
            "per_epoch": self.per_epoch,
        }


def build_train_sampler(
    cfg: Mapping[str, Any], factors: np.ndarray, *, rank: int = 0, world_size: int = 1
) -> EpochSampler:
    """The sampler ``cfg.sampler.type`` names (``SAMPLERS``); ``factors`` are the images' repeat factors."""
    sampler_cls = SAMPLERS.get(cfg["sampler"]["type"])
    return sampler_cls.from_config(cfg, factors, rank=rank, world_size=world_size)
