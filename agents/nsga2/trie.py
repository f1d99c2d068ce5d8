"""Prefix-trie evaluation of many block subsets at once: work shared by several subsets is done once.

Two subsets that keep the same blocks ``0..i`` hold the same token state after block ``i``: for a
static subset, and also for a deterministic skip policy deciding among the kept blocks (it sees the
same tokens and the same executed mask). So a population of masks is scored as a walk over the
prefix trie of its masks, one chunk of images at a time: the embedding runs once, each node of the
trie runs its block once for every subset below it, a removed block passes the state on without any
work, and a subset whose remaining blocks are all removed is finished where its last kept block
ran. The walk is depth first, so at most ``depth + 1`` states of one chunk are alive (small, and hot
in cache on a CPU); on a GPU a large chunk gives each block call a large batch.

Compared with scoring every subset on its own, the block evaluations drop from the total number of
kept blocks to the number of distinct kept-block prefixes (:func:`block_runs`): 1,024 -> 255 for
all 256 subsets of 8 blocks, and the embedding from ``P`` runs to one. Given a cache of states from
earlier walks over the same chunk (:mod:`agents.nsga2.cache`), a node found there is not run, and
states are computed lazily, so neither are the ancestors of a subtree the cache serves whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

State = tuple[torch.Tensor, ...]
"""The per-image tensors of one chunk (one row per image): tokens, plus whatever a step carries."""
Step = Callable[[int, State], State]
"""``step(block, state) -> state`` for the rows of a chunk that keep ``block``."""
Finish = Callable[[State, int], None]
"""``finish(state, mask_id)`` records the result of a subset whose kept blocks have all run."""


def check_masks(masks: torch.Tensor | np.ndarray | Sequence[Sequence[bool]], depth: int) -> np.ndarray:
    """Masks as ``bool (P, depth)`` numpy (a single ``(depth,)`` mask becomes one row).

    Raises:
        ValueError: Not ``depth`` columns, no row, or values other than 0/1.
    """
    arr = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if arr.ndim == 1 and arr.shape[0] == depth:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != depth or arr.shape[0] == 0:
        raise ValueError(f"masks must have shape (P, {depth}) (one row per subset, True = block kept), got {tuple(arr.shape)}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("masks must hold only 0/1 or True/False (True = block kept)")
        arr = arr.astype(bool)
    return arr


def block_runs(masks: np.ndarray) -> int:
    """Block evaluations per image when ``masks`` are scored through their prefix trie (distinct kept prefixes)."""
    unique = np.unique(masks, axis=0)
    return sum(len({row[: i + 1].tobytes() for row in unique if row[i]}) for i in range(unique.shape[1]))


class StateCache(Protocol):
    """Where :func:`walk_trie` finds and leaves interior nodes' states (e.g. :class:`agents.nsga2.cache.ChunkView`)."""

    def get(self, key: tuple[int, ...]) -> State | None:
        """The state after the kept blocks ``key`` (``()``: the embedding), or None."""

    def put(self, key: tuple[int, ...], state: State) -> None:
        """Keep the state after the kept blocks ``key``."""


class _Lazy:
    """A state computed on first use (a node whose subtree is served from the cache is never computed)."""

    __slots__ = ("make", "value")

    def __init__(self, make: Callable[[], State] | None = None, value: State | None = None) -> None:
        self.make, self.value = make, value

    def get(self) -> State:
        if self.value is None:
            assert self.make is not None
            self.value, self.make = self.make(), None
        return self.value


def walk_trie(
    masks: np.ndarray,
    state: State | Callable[[], State],
    step: Step,
    finish: Finish,
    last_step: Step | None = None,
    cache: StateCache | None = None,
) -> int:
    """Score every row of the distinct ``bool (U, depth)`` ``masks`` on one chunk, sharing common prefixes.

    Args:
        masks: Distinct masks (True = block kept); ``finish`` receives row indices into them.
        state: The chunk's state after the embedding, or a function computing it (called only if needed).
        step: Runs one block on the whole chunk; must return new tensors (states are shared).
        finish: Called once per mask, with the state after its last kept block.
        last_step: Runs a block instead of ``step`` where no subset below keeps a later block (a
            leaf of the trie: only ``finish`` reads its output, e.g. only the class token).
        cache: States of interior nodes (and of the embedding, key ``()``) from earlier walks over the
            same chunk: a stored node is not run, nor are its ancestors unless something else needs them.
            New interior states are offered to it. Leaves are neither looked up nor stored.

    Returns:
        The number of ``step`` / ``last_step`` calls made (blocks run for the chunk).
    """
    runs = 0

    def node(key: tuple[int, ...], make: Callable[[], State]) -> _Lazy:
        stored = cache.get(key) if cache is not None else None
        if stored is not None:
            return _Lazy(value=stored)

        def compute() -> State:
            out = make()
            if cache is not None:
                cache.put(key, out)
            return out

        return _Lazy(compute)

    def run(fn: Step, j: int, parent: _Lazy) -> State:
        nonlocal runs
        runs += 1
        return fn(j, parent.get())

    def visit(ids: np.ndarray, i: int, key: tuple[int, ...], lazy: _Lazy) -> None:
        rest = masks[ids, i:]
        done = ~rest.any(1)
        for mask_id in ids[done]:  # at most one: masks are distinct
            finish(lazy.get(), int(mask_id))
        ids, rest = ids[~done], rest[~done]
        if not len(ids):
            return
        j = i + int(np.argmax(rest.any(0)))  # next block some subset below keeps (removed blocks cost nothing)
        keeps = masks[ids, j]
        if not keeps.all():
            visit(ids[~keeps], j + 1, key, lazy)
        below = ids[keeps]
        if last_step is not None and not masks[below, j + 1 :].any():  # a leaf
            child = _Lazy(lambda: run(last_step, j, lazy))
        else:
            child = node((*key, j), lambda: run(step, j, lazy))
        visit(below, j + 1, (*key, j), child)

    visit(np.arange(len(masks)), 0, (), node((), state) if callable(state) else _Lazy(value=state))
    return runs
