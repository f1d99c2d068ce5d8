"""Token states of prefix-trie nodes kept across calls: later generations of a search reuse earlier work.

Within one population, :func:`agents.nsga2.trie.walk_trie` runs each distinct prefix of kept
blocks once. Across generations the same prefixes come back (NSGA-II's offspring share most of
their parents' prefixes), and with a fixed backbone, fixed images and fixed chunks the state after a
prefix is always the same tensor. :class:`PrefixCache` keeps such states between calls, within a
memory budget, so a later population runs only the prefixes no earlier population left behind. The
embedding of each chunk is the trie's root and is kept too.

The cache is exact: a stored state is the very tensor the walk computed, handed back unchanged, so
scores with and without a cache are identical. It belongs to one search (the pymoo problems own one
each). It checks what its states were computed from at every :meth:`PrefixCache.bind`: the modules'
parameters and buffers (their storage and in-place version counters: an optimiser step or a
``load_state_dict`` changes them), the images and the chunking. When any of them changed, it starts
empty again.

When the budget is full the deepest states go first (least recently used among equals): a shallow
prefix is shared by more subsets, so it is worth more.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Hashable

import torch

from vitskip_env.deploy import weights_key

from .trie import State

Key = tuple[int, ...]
"""The kept blocks of a prefix, in order (``()`` is the embedding)."""


def fingerprint(*parts: object) -> tuple:
    """What states computed from ``parts`` depend on: modules by parameters and buffers, tensors by storage and version."""
    out: list[Hashable] = []
    for part in parts:
        if isinstance(part, torch.nn.Module):
            out.append((id(part), weights_key(part)))
        elif isinstance(part, torch.Tensor):  # an inference tensor has no version counter
            version = None if part.is_inference() else part._version
            out.append((part.data_ptr(), version, tuple(part.shape), part.dtype, part.device))
        elif isinstance(part, int | float | str | bool | type(None)):
            out.append(part)
        else:
            out.append((type(part).__qualname__, id(part)))
    return tuple(out)


class PrefixCache:
    """Token states after prefixes of kept blocks, per chunk of images, within ``budget_mb`` of memory.

    Args:
        budget_mb: Most memory the stored states may take (on the backbone's device); 0 stores nothing,
            ``float("inf")`` sets no limit.

    Attributes:
        hits: States handed back instead of recomputed (a block run, or an embedding, saved).
        misses: States looked up and not found.
        evictions: States dropped to stay within the budget.

    Example:
        >>> cache = PrefixCache(budget_mb=1024)  # doctest: +SKIP
        >>> evaluate_subsets(vit, population, images, labels, dataset=ds, cache=cache)  # doctest: +SKIP
    """

    def __init__(self, budget_mb: float = 1024.0) -> None:
        if not budget_mb >= 0:
            raise ValueError(f"budget_mb must be >= 0 (MiB of token states to keep; 0 turns the cache off), got {budget_mb!r}")
        self.budget = sys.maxsize if math.isinf(budget_mb) else int(budget_mb * 2**20)
        self._states: OrderedDict[tuple[int, Key], State] = OrderedDict()
        self._sizes: dict[tuple[int, Key], int] = {}
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0
        self._signature: tuple | None = None

    def __len__(self) -> int:
        return len(self._states)

    def bind(self, signature: tuple) -> None:
        """Use the cache for states computed from ``signature`` (see :func:`fingerprint`); empty it if that changed."""
        if signature != self._signature:
            self.clear()
            self._signature = signature

    def clear(self) -> None:
        """Drop every stored state (the counters stay)."""
        self._states.clear()
        self._sizes.clear()
        self.nbytes = 0

    def chunk(self, index: int) -> ChunkView:
        """The states of one chunk of images (``index``: its position among the chunks)."""
        return ChunkView(self, index)

    def get(self, chunk: int, key: Key) -> State | None:
        """The stored state of ``key`` in ``chunk``, or None."""
        state = self._states.get((chunk, key))
        if state is None:
            self.misses += 1
            return None
        self._states.move_to_end((chunk, key))
        self.hits += 1
        return state

    def put(self, chunk: int, key: Key, state: State) -> None:
        """Store ``state`` (not copied: the caller must not change it afterwards), evicting the deepest states if needed."""
        size = sum(t.numel() * t.element_size() for t in state)
        if size > self.budget or (chunk, key) in self._states:
            return
        self._states[(chunk, key)] = state
        self._sizes[(chunk, key)] = size
        self.nbytes += size
        while self.nbytes > self.budget:
            victim = max(self._states, key=lambda k: len(k[1]))  # deepest; the least recently used (first) among equals
            del self._states[victim]
            self.nbytes -= self._sizes.pop(victim)
            self.evictions += 1

    def stats(self) -> dict[str, float]:
        """``states``, ``mb`` held, ``hits``, ``misses``, ``evictions``."""
        return {"states": len(self), "mb": round(self.nbytes / 2**20, 1), "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}  # fmt: skip


class ChunkView:
    """:class:`PrefixCache` restricted to one chunk: ``get(key)`` / ``put(key, state)``, what :func:`walk_trie` takes."""

    def __init__(self, cache: PrefixCache, index: int) -> None:
        self.cache, self.index = cache, index

    def get(self, key: Key) -> State | None:
        """The stored state after the prefix ``key`` of this chunk, or None."""
        return self.cache.get(self.index, key)

    def put(self, key: Key, state: State) -> None:
        """Store the state after the prefix ``key`` of this chunk."""
        self.cache.put(self.index, key, state)
