"""What the built-in procedural datasets share: the on-disk split cache and the loader they register.

A procedural dataset (``shapes``, ``relations``) is a pure function ``render(n, seed) -> (images,
labels, difficulty)``. :func:`cached_split` renders a split once and keeps it in
``cache_dir()/<name>/``; a cache file is only a shortcut, so anything wrong with it (damaged,
another length or dtype, a label or difficulty out of range) leads to regeneration with a
``RuntimeWarning`` naming the file, never to wrong data. Cache files are never unpickled and are
written atomically. The file name carries a hash of everything the pixels depend on (generator
version, size, seed, torch version), so a stale cache is never even opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._npz import CacheError, read_npz, write_npz
from .dataset import HALF, ImageDataset

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Generator:
    """A procedural dataset: its name, classes, split sizes and seeds, and its renderer."""

    name: str
    classes: Sequence[str]
    render: Callable[[int, int], Arrays]
    split_sizes: dict[str, int]
    split_seeds: dict[str, int]
    version: int
    image_size: int = 32

    def split(self, split: str, n: int | None = None, use_disk_cache: bool = True) -> Arrays:
        """Images, labels and difficulty of ``split`` (``n`` images; default the split's size).

        Raises:
            ValueError: Unknown split or a non-positive ``n``.
        """
        if split not in self.split_sizes:
            raise ValueError(f"{self.name} split must be one of {sorted(self.split_sizes)}, got {split!r}")
        n = self.split_sizes[split] if n is None else n
        if n < 1:
            raise ValueError(f"n must be a positive number of images, got {n}")
        seed = self.split_seeds[split]
        if not use_disk_cache:
            return self.render(n, seed)
        return cached_split(self, split, n, seed)

    def load(self, split: str, root: Path, download: bool) -> ImageDataset:
        """The registry's loader (``root`` and ``download`` are unused: it renders offline)."""
        images, labels, difficulty = self.split(split)
        return ImageDataset(
            self.name,
            split,
            torch.from_numpy(images),
            torch.from_numpy(labels),
            list(self.classes),
            HALF,
            HALF,
            torch.from_numpy(difficulty),
        )


def cached_split(gen: Generator, split: str, n: int, seed: int) -> Arrays:
    """``gen.render(n, seed)``, read from ``cache_dir()/<name>/`` when a valid copy is there."""
    from ..files import cache_dir

    path = cache_dir() / gen.name / f"{gen.name}-{split}-{n}-{cache_tag(gen.version, n, seed)}.npz"
    if path.exists():
        try:
            return read_cache(path, n, len(gen.classes), gen.image_size)
        except CacheError as err:
            warnings.warn(f"{gen.name} cache {path} cannot be used ({err}); regenerating it", RuntimeWarning, stacklevel=3)
    images, labels, difficulty = gen.render(n, seed)
    with contextlib.suppress(OSError):  # a read-only cache folder only costs regeneration time
        write_npz(path, {"images": images, "labels": labels, "difficulty": difficulty})
    return images, labels, difficulty


def cache_tag(version: int, n: int, seed: int) -> str:
    """Hash of everything the rendered pixels depend on."""
    key = f"{version}-{n}-{seed}-{torch.__version__.split('+')[0]}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def read_cache(path: Path, n: int, num_classes: int, image_size: int) -> Arrays:
    """The cached split if ``path`` holds exactly what the renderer returns for ``n`` images.

    Raises:
        CacheError: Unreadable, wrong dtype or length, labels outside the classes, or a difficulty
            outside [0, 1].
    """
    z = read_npz(
        path,
        {
            "images": (np.uint8, (n, 3, image_size, image_size)),
            "labels": (np.int64, (n,)),
            "difficulty": (np.float32, (n,)),
        },
    )
    labels, difficulty = z["labels"], z["difficulty"]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise CacheError(f"labels span {labels.min()}..{labels.max()}; expected 0..{num_classes - 1}")
    if not ((difficulty >= 0.0) & (difficulty <= 1.0)).all():  # also rejects NaN
        raise CacheError("difficulty has values outside [0, 1]")
    return z["images"], labels, difficulty


def balanced_labels(n: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """``n`` labels, each class ``n // num_classes`` or one more times, in a seeded random order."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=g)]


def render_chunked(
    n: int, seed: int, num_classes: int, render_chunk: Callable[[torch.Tensor, torch.Generator], dict], chunk: int = 2_000
) -> dict[str, np.ndarray]:
    """Balanced labels from ``seed``, then ``render_chunk(labels, generator)`` per chunk of ``chunk`` images.

    Each chunk has its own generator (seeded from ``seed`` and its first index), so a chunk renders
    the same whatever ``n`` is. Returns the chunks' arrays concatenated, plus ``labels`` (int64).
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    g = torch.Generator().manual_seed(seed)
    labels = balanced_labels(n, num_classes, g)
    parts = [
        render_chunk(labels[start : start + chunk], torch.Generator().manual_seed(seed * 1_000_003 + start))
        for start in range(0, n, chunk)
    ]
    out = {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
    out["labels"] = labels.numpy().astype(np.int64)
    return out


def scene_arrays(scenes: dict[str, np.ndarray]) -> Arrays:
    """``(images, labels, difficulty)`` from a ``render_scenes`` dict: difficulty = the mean of its ``factors``."""
    return scenes["images"], scenes["labels"], scenes["factors"].mean(1).astype(np.float32)
