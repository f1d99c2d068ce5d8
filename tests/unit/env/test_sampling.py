"""ImageSampler: shuffled epochs without replacement from stored-nothing permutations."""

from __future__ import annotations

import numpy as np
import pytest

from vitskip_env.env.sampling import ImageSampler, feistel_permute


@pytest.mark.parametrize("n", [1, 2, 3, 10, 97, 1000, 4099])
def test_feistel_is_a_permutation_for_every_key(n: int) -> None:
    keys = np.random.default_rng(n).integers(0, 2**63, size=(3, 4), dtype=np.uint64)
    for row in keys:
        perm = feistel_permute(np.arange(n), np.repeat(row[None], n, 0), n)
        assert perm.dtype == np.int64 and np.array_equal(np.sort(perm), np.arange(n))


def test_streams_are_independent_reproducible_epochs() -> None:
    n, streams = 50, 3
    sampler = ImageSampler(n, streams)
    sampler.seed([np.random.default_rng(s) for s in (1, 2, 3)])
    draws = np.stack([sampler.next() for _ in range(2 * n)], 1)  # (streams, 2 epochs)
    for row in draws:
        assert np.array_equal(np.sort(row[:n]), np.arange(n)) and np.array_equal(np.sort(row[n:]), np.arange(n))
        assert not np.array_equal(row[:n], row[n:])
    assert len({tuple(row[:n]) for row in draws}) == streams
    # Stream j depends only on its own generator: the same seed alone gives the same sequence.
    alone = ImageSampler(n, 1)
    alone.seed([np.random.default_rng(2)])
    assert [int(alone.next()[0]) for _ in range(2 * n)] == draws[1].tolist()
    # Orders look random: adjacent draws are not mostly neighbours.
    assert np.mean(np.abs(np.diff(draws[0, :n])) == 1) < 0.2


def test_sequential_and_errors() -> None:
    sampler = ImageSampler(5, 2, "sequential")
    sampler.seed([np.random.default_rng(0)] * 2)
    assert [sampler.next().tolist() for _ in range(3)] == [[0, 1], [2, 3], [4, 0]]
    with pytest.raises(ValueError, match="sampling must be one of"):
        ImageSampler(5, 1, "random")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="seed"):
        ImageSampler(5, 1).next()
