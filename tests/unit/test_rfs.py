"""Repeat Factor Sampling: hand-computed repeat factors, stochastic rounding, sharding, exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvisctl.config import load_config
from lvisctl.data.samplers import (
    PlainSampler,
    RepeatFactorSampler,
    build_train_sampler,
    image_frequency_from_sets,
    repeat_factors,
)
from lvisctl.errors import LvisctlError

# 10 images. Class 1 in images 0..8 (f = 0.9), class 2 only in image 0 (f = 0.1), class 3 in images 1..5
# (f = 0.5), class 4 in images 6, 7 (f = 0.2); image 9 has no class.
SETS = [{1, 2}, {1, 3}, {1, 3}, {1, 3}, {1, 3}, {1, 3}, {1, 4}, {1, 4}, {1}, set()]


def test_image_frequency_hand_computed():
    assert image_frequency_from_sets(SETS) == {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.2}


def test_repeat_factors_hand_computed():
    # t = 0.4: r(1) = max(1, sqrt(0.4/0.9)) = 1; r(2) = sqrt(0.4/0.1) = 2; r(3) = max(1, sqrt(0.8)) = 1;
    # r(4) = sqrt(0.4/0.2) = sqrt(2). r(I) is the max over the image's classes; 1 for an empty image.
    expected = [2.0, 1, 1, 1, 1, 1, math.sqrt(2), math.sqrt(2), 1, 1]
    freq = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.2}
    assert np.allclose(repeat_factors(SETS, freq, 0.4), expected)
    # The same frequencies as an array in CategoryStats order (entry i = class i + 1).
    assert np.allclose(repeat_factors(SETS, np.array([0.9, 0.1, 0.5, 0.2]), 0.4), expected)


def test_repeat_factors_lvis_threshold():
    # t = 0.001 (the LVIS paper): f = 0.00025 -> sqrt(4) = 2; f = 0.0001 -> sqrt(10); f >= t -> 1.
    freq = {1: 0.00025, 2: 0.0001, 3: 0.001, 4: 0.3}
    got = repeat_factors([{1}, {2}, {3}, {4}, {1, 2, 4}], freq, 0.001)
    assert np.allclose(got, [2.0, math.sqrt(10), 1.0, 1.0, math.sqrt(10)])


def test_integer_factors_repeat_exactly():
    s = RepeatFactorSampler([2.0, 1.0, 3.0], seed=0, shuffle=False)
    assert [i for i, _, _ in s] == [0, 0, 1, 2, 2, 2]
    for epoch in range(5):
        shuffled = RepeatFactorSampler([2.0, 1.0, 3.0], seed=0)
        shuffled.set_epoch(epoch)
        assert sorted(i for i, _, _ in shuffled) == [0, 0, 1, 2, 2, 2]


def test_stochastic_rounding_matches_fractional_factors():
    # r = 1.5 appears once or twice per epoch, twice with probability 0.5; r = 2.25 two or three times.
    s = RepeatFactorSampler([1.5, 1.0, 2.25], seed=7)
    counts = []
    for epoch in range(400):
        s.set_epoch(epoch)
        counts.append(np.bincount([i for i, _, _ in s], minlength=3))
    counts = np.array(counts)
    assert set(counts[:, 0]) == {1, 2} and set(counts[:, 1]) == {1} and set(counts[:, 2]) == {2, 3}
    # Standard error over 400 epochs is 0.025 (r=1.5) and 0.022 (r=2.25): 0.08 is > 3 sigma.
    assert abs(counts[:, 0].mean() - 1.5) < 0.08
    assert abs(counts[:, 2].mean() - 2.25) < 0.08


def test_deterministic_by_seed_and_epoch():
    factors = np.linspace(1.0, 3.0, 20)
    a, b = RepeatFactorSampler(factors, seed=3), RepeatFactorSampler(factors, seed=3)
    a.set_epoch(4)
    b.set_epoch(2)
    b.set_epoch(4)  # order of calls must not matter
    assert list(a) == list(b)
    c = RepeatFactorSampler(factors, seed=3)
    c.set_epoch(5)
    assert list(a) != list(c)
    d = RepeatFactorSampler(factors, seed=4)
    d.set_epoch(4)
    assert [i for i, _, _ in a] != [i for i, _, _ in d]
    assert all(e == 4 for _, e, _ in a)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_equal_shards(world_size):
    factors = np.array([1.0, 1.5, 2.0, 1.0, 3.5, 1.2, 1.0])
    full = RepeatFactorSampler(factors, seed=1)
    full.set_epoch(2)
    epoch_list = full.epoch_indices()
    shards = []
    for rank in range(world_size):
        s = RepeatFactorSampler(factors, seed=1, rank=rank, world_size=world_size)
        s.set_epoch(2)
        shards.append(list(s))
    lengths = {len(sh) for sh in shards}
    padded = -(-len(epoch_list) // world_size) * world_size
    assert lengths == {padded // world_size}
    positions = sorted(p for sh in shards for _, _, p in sh)
    assert positions == list(range(padded))  # disjoint and covering
    for sh in shards:
        for index, _, position in sh:
            assert index == epoch_list[position % len(epoch_list)]


def test_resume_mid_epoch_is_exact():
    factors = np.array([1.0, 2.5, 1.3, 1.0, 4.0])
    s = RepeatFactorSampler(factors, seed=9, rank=1, world_size=2)
    s.set_epoch(3)
    full = list(s)
    assert len(s) == s.num_samples == len(full)
    s.set_epoch(3, start=4)
    assert list(s) == full[4:]
    assert len(s) == len(full) - 4
    state = s.state_dict(consumed=5)
    assert state["epoch"] == 3 and state["start"] == 5
    resumed = RepeatFactorSampler(factors, seed=9, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert list(resumed) == full[5:]
    other = RepeatFactorSampler(factors, seed=9, rank=0, world_size=3)
    with pytest.raises(LvisctlError, match="world_size"):
        other.load_state_dict(state)
    with pytest.raises(LvisctlError, match="kind"):
        PlainSampler(5, seed=9, rank=1, world_size=2).load_state_dict(state)


def test_plain_sampler_every_image_once():
    s = PlainSampler(20, seed=0)
    s.set_epoch(1)
    indices = [i for i, _, _ in s]
    assert sorted(indices) == list(range(20)) and indices != list(range(20))
    assert [p for _, _, p in s] == list(range(20))
    assert [i for i, _, _ in PlainSampler(5, seed=0, shuffle=False)] == [0, 1, 2, 3, 4]


def test_build_from_config():
    cfg = load_config(None, ["sampler.type=uniform"])
    assert isinstance(build_train_sampler(cfg, np.ones(4)), PlainSampler)
    cfg = load_config(None, [])
    s = build_train_sampler(cfg, np.array([1.0, 2.0]), rank=1, world_size=2)
    assert isinstance(s, RepeatFactorSampler) and s.rank == 1 and s.seed == cfg.seed
    with pytest.raises(ValueError, match=">= 1"):
        RepeatFactorSampler([0.5, 1.0], seed=0)
