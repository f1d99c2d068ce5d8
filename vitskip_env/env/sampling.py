"""Which image each episode sees: shuffled epochs (without replacement) or a sequential sweep.

``ImageSampler`` serves ``S`` independent streams (one per environment of a vector env). In
``"shuffle"`` mode stream ``j`` walks through its own random permutation of the split, drawn from
its own ``np.random.Generator``; once the split is exhausted a new permutation is drawn. So a
native vector env whose stream ``j`` is seeded with ``seed + j`` sees exactly the images that
``SyncVectorEnv`` sub-environment ``j`` (seeded ``seed + j``) sees.

The permutations are never stored: index ``k`` of stream ``j``'s permutation is computed on demand
by a keyed 4-round Feistel network on the next power-of-four domain, with cycle-walking back into
``[0, n)`` (the standard format-preserving construction). Memory is ``O(S)`` instead of ``O(S * n)``
(4096 environments over a 100k-image split would otherwise hold 400M indices), and every stream
costs a few vectorised integer operations per episode.

In ``"sequential"`` mode stream ``j`` of ``S`` takes image ``(k * S + j) mod n`` at its ``k``-th
episode, so a vector env sweeps the split in order, each batch of ``S`` episodes taking the next
``S`` images; a single env (``S = 1``) goes ``0, 1, 2, ...``. Evaluating ``ceil(n / S)`` batches
covers every image exactly once (the last batch wraps around; use ``info["image_index"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Sampling = Literal["shuffle", "sequential"]
SAMPLING_MODES: tuple[str, ...] = ("shuffle", "sequential")
_ROUNDS = 4


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a strong 64-bit mixing function (wrapping uint64 arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def feistel_permute(index: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
    """Element ``index[j]`` of the keyed permutation of ``range(n)`` with round keys ``keys[j]``.

    Args:
        index: ``(S,)`` positions in ``[0, n)``.
        keys: ``uint64 (S, 4)`` round keys, one row per stream.
        n: Size of the permuted range.

    Returns:
        ``int64 (S,)``, a bijection of ``range(n)`` for every fixed key row.
    """
    bits = max(2, int(n - 1).bit_length())
    half = (bits + 1) // 2
    low_mask = np.uint64((1 << half) - 1)
    x = index.astype(np.uint64)
    todo = np.ones(x.shape, dtype=bool)
    while todo.any():  # cycle-walking: re-encrypt values that fall outside [0, n); ends since it is a permutation
        left, right = x[todo] >> np.uint64(half), x[todo] & low_mask
        k = keys[todo]
        for r in range(_ROUNDS):
            left, right = right, left ^ (_mix(right ^ k[:, r]) & low_mask)
        x[todo] = (left << np.uint64(half)) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


class ImageSampler:
    """Image indices for ``num_streams`` episode streams over a split of ``n`` images.

    Args:
        n: Number of images in the split.
        num_streams: Episodes served per call of :meth:`next` (the vector env's ``num_envs``).
        mode: ``"shuffle"`` (random permutation per epoch and stream) or ``"sequential"``.
    """

    def __init__(self, n: int, num_streams: int, mode: Sampling = "shuffle") -> None:
        if mode not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {list(SAMPLING_MODES)}, got {mode!r}")
        if n < 1:
            raise ValueError(f"the split has no images (n={n})")
        self.n = n
        self.num_streams = num_streams
        self.mode = mode
        self.rngs: list[np.random.Generator] = []
        #: Episodes each stream has started in its current epoch, ``int64 (S,)``.
        self.positions = np.zeros(num_streams, dtype=np.int64)
        #: Epochs each stream has finished, ``int64 (S,)``.
        self.epochs = np.zeros(num_streams, dtype=np.int64)
        self._keys: np.ndarray | None = None

    @property
    def position(self) -> int:
        """The streams' common position (they move together unless :meth:`next_rows` serves some of them)."""
        return int(self.positions[0])

    @property
    def epoch(self) -> int:
        """The streams' common epoch (see :attr:`position`)."""
        return int(self.epochs[0])

    def seed(self, rngs: Sequence[np.random.Generator]) -> None:
        """Start every stream afresh from its generator (called on ``reset(seed=...)``)."""
        if len(rngs) != self.num_streams:
            raise ValueError(f"need {self.num_streams} generators, got {len(rngs)}")
        self.rngs = list(rngs)
        self.positions = np.zeros(self.num_streams, dtype=np.int64)
        self.epochs = np.zeros(self.num_streams, dtype=np.int64)
        self._keys = None

    def next(self) -> np.ndarray:
        """The next image index of every stream, ``int64 (num_streams,)``."""
        return self.next_rows(np.arange(self.num_streams))

    def next_rows(self, rows: np.ndarray) -> np.ndarray:
        """The next image index of the streams ``rows`` only (episodes of different lengths), ``int64 (len(rows),)``.

        Each stream draws exactly what it would draw alone, so a stream's images do not depend on
        when the other streams start their episodes.
        """
        if not self.rngs:
            raise RuntimeError("ImageSampler.seed must be called before next()")
        rows = np.asarray(rows, dtype=np.int64)
        pos = self.positions[rows]
        if self.mode == "sequential":
            self.positions[rows] += 1
            return (pos * self.num_streams + rows) % self.n
        if self._keys is None:
            # One draw per stream per epoch, from that stream's own generator.
            self._keys = np.stack([rng.integers(0, 2**63, size=_ROUNDS, dtype=np.uint64) for rng in self.rngs])
        out = feistel_permute(pos.astype(np.uint64), self._keys[rows], self.n)
        self.positions[rows] += 1
        wrapped = rows[self.positions[rows] == self.n]
        if wrapped.size:  # those streams start a new epoch: a new permutation from their own generator
            self.positions[wrapped] = 0
            self.epochs[wrapped] += 1
            if wrapped.size == self.num_streams:
                self._keys = None
            else:
                for j in wrapped.tolist():
                    self._keys[j] = self.rngs[j].integers(0, 2**63, size=_ROUNDS, dtype=np.uint64)
        return out


def draw_compute_weights(
    budget_range: tuple[float, float] | None, rngs: list[np.random.Generator], pinned: float | None = None
) -> np.ndarray | None:
    """``float32 (len(rngs),)`` compute weights, log-uniform in ``budget_range``, one draw per stream, or ``pinned``.

    ``None`` when the env is not budget-conditioned (a pinned weight is then an error). Each stream draws
    from its own generator right after its image, so a vector env's row draws what a single env would.

    Raises:
        ValueError: ``pinned`` outside the range, or given to an env that is not budget-conditioned.
    """
    if budget_range is None:
        if pinned is not None:
            raise ValueError("reset option 'compute_weight' needs a budget-conditioned env (compute_weight_range=(lo, hi))")
        return None
    lo, hi = budget_range
    if pinned is not None:
        if isinstance(pinned, bool) or not isinstance(pinned, (int, float, np.floating, np.integer)) or not lo <= pinned <= hi:
            raise ValueError(f"reset option 'compute_weight' must be a number in the env's compute_weight_range "
                             f"[{lo}, {hi}], got {pinned!r}")  # fmt: skip
        return np.full(len(rngs), pinned, dtype=np.float32)
    return np.array([lo * (hi / lo) ** rng.random() for rng in rngs], dtype=np.float32)
