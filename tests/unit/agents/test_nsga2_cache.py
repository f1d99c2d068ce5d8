"""Prefix states kept across generations: exact scores, stored prefixes not run again, budget, invalidation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from agents.nsga2 import LayerSubsetProblem, evaluate_subsets
from agents.nsga2.cache import PrefixCache
from agents.nsga2.trie import walk_trie
from vitskip_env import SkippableViT, make_dataset

ALL4 = np.array(list(itertools.product([False, True], repeat=4)))[1:]


@pytest.fixture(scope="module")
def setup() -> tuple[SkippableViT, object]:
    torch.manual_seed(0)
    return SkippableViT("micro", num_classes=10).eval(), make_dataset("shapes", "val")


def generations(seed: int = 0) -> list[np.ndarray]:
    """Overlapping populations of the 15 subsets of 4 blocks, as successive generations hand them over."""
    rng = np.random.default_rng(seed)
    return [ALL4[rng.choice(len(ALL4), 6, replace=False)] for _ in range(5)]


def counting_walk(masks: np.ndarray, tokens: torch.Tensor, vit: SkippableViT, cache) -> tuple[list[int], int]:
    """Blocks ``walk_trie`` runs, and how often it embeds, for ``masks`` on ``tokens`` with ``cache``."""
    calls, embeds = [], []

    def root() -> tuple[torch.Tensor]:
        embeds.append(1)
        return (tokens,)

    step = lambda i, s: (calls.append(i), (vit.run_block(i, s[0]),))[1]  # noqa: E731
    with torch.inference_mode():
        n = walk_trie(masks, root, step, lambda s, k: None, cache=cache)
    assert n == len(calls)
    return calls, len(embeds)


def test_a_stored_prefix_is_not_run_again_nor_its_ancestors(setup) -> None:
    vit, ds = setup
    view = PrefixCache(64).chunk(0)
    with torch.inference_mode():
        tokens = vit.embed(ds.normalize(ds.images[:8]))
    assert counting_walk(np.array([[1, 1, 0, 1]], bool), tokens, vit, view) == ([0, 1, 3], 1)
    # prefixes 1, 11 and 1101 are stored: only 111 runs (from the stored 11), and nothing is embedded again
    assert counting_walk(np.array([[1, 1, 1, 0], [1, 1, 0, 1]], bool), tokens, vit, view) == ([2], 0)
    assert counting_walk(np.array([[1, 1, 0, 1]], bool), tokens, vit, view) == ([], 0)
    assert counting_walk(np.array([[0, 1, 0, 0]], bool), tokens, vit, view) == ([1], 0)  # 01 is new; the root is stored


def test_scores_over_generations_equal_scores_without_a_cache(setup) -> None:
    vit, ds = setup
    cache = PrefixCache(64)
    calls = []
    for pop in generations():
        got = evaluate_subsets(vit, pop, ds.images[:100], ds.labels[:100], dataset=ds, batch_size=32, cache=cache)
        ref = evaluate_subsets(vit, pop, ds.images[:100], ds.labels[:100], dataset=ds, batch_size=32)
        assert torch.equal(got["correct"], ref["correct"])
        assert int(got["block_calls"]) <= int(ref["block_calls"]) == 4 * int(ref["block_runs"])  # 4 chunks
        calls.append(int(got["block_calls"]))
    assert calls[-1] < calls[0] and cache.hits > 0 and len(cache) > 0


def test_changed_weights_or_images_empty_the_cache(setup) -> None:
    vit, ds = setup
    vit = SkippableViT("micro", num_classes=10).eval()
    vit.load_state_dict(setup[0].state_dict())
    cache = PrefixCache(64)
    images, labels = ds.images[:64], ds.labels[:64]
    evaluate_subsets(vit, ALL4, images, labels, dataset=ds, cache=cache)
    with torch.no_grad():  # an in-place change of one block, as an optimiser step would make
        vit.vit.blocks[0].mlp.fc2.weight.mul_(-3.0)
    got = evaluate_subsets(vit, ALL4, images, labels, dataset=ds, cache=cache)
    fresh = evaluate_subsets(vit, ALL4, images, labels, dataset=ds)
    assert torch.equal(got["correct"], fresh["correct"])
    assert int(got["block_calls"]) == int(fresh["block_calls"])  # nothing stale was reused
    images, labels = ds.images[64:128], ds.labels[64:128]
    other = evaluate_subsets(vit, ALL4, images, labels, dataset=ds, cache=cache)
    fresh = evaluate_subsets(vit, ALL4, images, labels, dataset=ds)
    assert torch.equal(other["correct"], fresh["correct"]) and int(other["block_calls"]) == int(fresh["block_calls"])


def test_budget_keeps_shallow_prefixes_and_zero_stores_nothing() -> None:
    state = (torch.zeros(256, dtype=torch.float32),)  # 1 KiB
    cache = PrefixCache(budget_mb=3 / 1024)  # room for three states
    for key in [(), (0,), (0, 1), (0, 1, 2), (1,)]:
        cache.put(0, key, state)
    assert cache.nbytes <= cache.budget and len(cache) == 3 and cache.evictions == 2
    assert cache.get(0, ()) is state and cache.get(0, (0,)) is state and cache.get(0, (1,)) is state
    assert cache.get(0, (0, 1, 2)) is None and cache.get(0, (0, 1)) is None  # the deepest went first
    assert cache.get(1, ()) is None  # chunks are kept apart
    empty = PrefixCache(0)
    empty.put(0, (), state)
    assert len(empty) == 0
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="budget_mb must be >= 0"):
            PrefixCache(bad)
    unlimited = PrefixCache(float("inf"))
    for key in [(), (0,), (0, 1)]:
        unlimited.put(0, key, state)
    assert len(unlimited) == 3 and unlimited.evictions == 0


def test_problems_reuse_prefixes_between_generations(setup) -> None:
    vit, ds = setup
    with_cache = LayerSubsetProblem(vit, ds.images[:64], ds.labels[:64], dataset=ds)
    without = LayerSubsetProblem(vit, ds.images[:64], ds.labels[:64], dataset=ds, cache_mb=0)
    for pop in generations(1):
        a, b = {}, {}
        with_cache._evaluate(pop, a)
        without._evaluate(pop, b)
        np.testing.assert_array_equal(a["F"], b["F"])
    assert with_cache.cache.hits > 0 and len(without.cache) == 0
