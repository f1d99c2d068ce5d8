"""``shapes``: the built-in procedural dataset (offline, deterministic, with per-sample difficulty).

32x32 RGB images of one of ten shape kinds on a two-colour gradient background. Each sample has
a difficulty in [0, 1] built from five factors that make an image harder to classify:

==============  ========================================================================
factor          what grows with it
==============  ========================================================================
contrast        the colour distance between shape and background shrinks (0.85 -> 0.35)
noise           per-pixel Gaussian noise (sigma 0.02 -> 0.14)
scale           the shape shrinks (radius ~10 px -> ~5.5 px)
clutter         up to four distractor discs, coloured more and more like the shape
occlusion       a background-coloured rectangle covering part of the shape
==============  ========================================================================

Each factor is the sample's base difficulty plus independent jitter, and the recorded
``difficulty`` is the mean of the five factors actually used, so it measures what the image
really looks like. Rendering is vectorised in torch at 2x supersampling (anti-aliased edges) and
is a pure function of ``(split, n, seed)``: the train and test splits use disjoint seeds, and the
result is cached in memory and on disk (``cache_dir()/shapes``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ImageDataset
from .drawing import SHAPE_CLASSES, rotated_frame, shape_mask, unit_vectors
from .procedural import Generator, balanced_labels

IMAGE_SIZE = 32
SPLIT_SIZES = {"train": 50_000, "val": 5_000, "test": 10_000}
#: Disjoint seeds: no image of one split is rendered from the seed stream of another.
SPLIT_SEEDS = {"train": 20_251_121, "val": 40_251_121, "test": 70_251_121}
#: Bump when rendering changes, so stale disk caches are never reused.
GENERATOR_VERSION = 2
_SS = 2  # supersampling factor
_CHUNK = 2_000


def _render_chunk(n: int, labels: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n`` images of the given labels; returns uint8 (n, 3, 32, 32) and difficulty (n,)."""
    base = torch.rand(n, generator=g) ** 1.25  # more easy-to-medium than hard images
    factors = (base[:, None] + 0.18 * torch.randn(n, 5, generator=g)).clamp(0.0, 1.0)
    f_con, f_noise, f_scale, f_clut, f_occ = factors.unbind(1)
    difficulty = factors.mean(1)

    # Pixel-centre coordinates: coverage masks are computed on a supersampled grid and pooled
    # into anti-aliased alphas; colours are composited at the output resolution (4x less work).
    def grid(scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        coords = (torch.arange(IMAGE_SIZE * scale, dtype=torch.float32) + 0.5) / scale
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        return xx.expand(n, -1, -1), yy.expand(n, -1, -1)

    def alpha(mask: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(mask[:, None].to(torch.float32), _SS)

    xs, ys = grid(_SS)
    x1, y1 = grid(1)

    # Background: a linear gradient between two related colours.
    bg0 = torch.rand(n, 3, generator=g)
    bg1 = (bg0 + 0.25 * unit_vectors(n, g)).clamp(0, 1)
    ang = torch.rand(n, generator=g) * 2 * math.pi
    t = ((x1 - 16) * torch.cos(ang)[:, None, None] + (y1 - 16) * torch.sin(ang)[:, None, None]) / 32 + 0.5
    t = t.clamp(0, 1)[:, None]
    img = torch.lerp(bg0[:, :, None, None], bg1[:, :, None, None], t)
    bg_mid = 0.5 * (bg0 + bg1)

    # Foreground colour at a distance that shrinks with the contrast factor.
    # Mostly a brightness step (either sign) with some colour, so the silhouette is an edge that a
    # few filters can find, whatever the hues.
    contrast = 0.85 - 0.5 * f_con
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    direction = sign[:, None] * torch.full((n, 3), 3**-0.5) + 0.45 * unit_vectors(n, g)
    direction = direction / direction.norm(dim=1, keepdim=True)
    fg = bg_mid + contrast[:, None] * direction
    out_of_range = ((fg < 0) | (fg > 1)).any(1, keepdim=True)
    fg = torch.where(out_of_range, bg_mid - contrast[:, None] * direction, fg).clamp(0, 1)

    # The shape itself.
    radius = (10.0 - 4.5 * f_scale) * (0.9 + 0.2 * torch.rand(n, generator=g))
    # Centre jitter grows with difficulty (up to wherever the shape still fits).
    reach = ((IMAGE_SIZE / 2 - radius - 1.0) * (0.3 + 0.7 * f_scale)).clamp_min(0.0)
    cx = IMAGE_SIZE / 2 + reach * (2 * torch.rand(n, generator=g) - 1)
    cy = IMAGE_SIZE / 2 + reach * (2 * torch.rand(n, generator=g) - 1)
    u, v = rotated_frame(xs, ys, cx, cy, radius, torch.rand(n, generator=g) * 2 * math.pi)
    mask = torch.zeros(n, IMAGE_SIZE * _SS, IMAGE_SIZE * _SS, dtype=torch.bool)
    for kind in range(len(SHAPE_CLASSES)):
        idx = (labels == kind).nonzero().squeeze(1)
        if idx.numel():
            mask[idx] = shape_mask(kind, u[idx], v[idx])
    img = torch.lerp(img, fg[:, :, None, None].expand_as(img), alpha(mask))

    # Clutter: discs whose colour drifts from random towards the shape's colour.
    n_clutter = (f_clut * 4 + torch.rand(n, generator=g)).floor()
    for slot in range(4):
        active = n_clutter > slot
        px, py = torch.rand(n, generator=g) * IMAGE_SIZE, torch.rand(n, generator=g) * IMAGE_SIZE
        pr = 1.0 + 1.5 * torch.rand(n, generator=g)
        col = torch.lerp(torch.rand(n, 3, generator=g), fg, f_clut[:, None])
        disc = (xs - px[:, None, None]) ** 2 + (ys - py[:, None, None]) ** 2 <= (pr**2)[:, None, None]
        disc &= active[:, None, None]
        img = torch.lerp(img, col[:, :, None, None].expand_as(img), alpha(disc))

    # Occlusion: a background-coloured rectangle over part of the shape.
    occluded = torch.rand(n, generator=g) < f_occ
    half = radius * (0.4 + 0.5 * f_occ) / 2
    ox = cx + radius * (torch.rand(n, generator=g) * 1.6 - 0.8)
    oy = cy + radius * (torch.rand(n, generator=g) * 1.6 - 0.8)
    rect = ((x1 - ox[:, None, None]).abs() <= half[:, None, None]) & ((y1 - oy[:, None, None]).abs() <= half[:, None, None])
    rect &= occluded[:, None, None]
    img = torch.where(rect[:, None], bg_mid[:, :, None, None], img)

    sigma = 0.02 + 0.12 * f_noise
    img = img + sigma[:, None, None, None] * torch.randn(img.shape, generator=g)
    img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return img, difficulty


def render(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``n`` images deterministically from ``seed`` (no caching).

    Returns:
        ``images`` uint8 (n, 3, 32, 32), ``labels`` int64 (n,) balanced over the ten classes,
        ``difficulty`` float32 (n,) in [0, 1].
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    g = torch.Generator().manual_seed(seed)
    labels = balanced_labels(n, len(SHAPE_CLASSES), g)
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    difficulty = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk_g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        images[start:stop], difficulty[start:stop] = _render_chunk(stop - start, labels[start:stop], chunk_g)
    return images.numpy(), labels.numpy().astype(np.int64), difficulty.numpy()


# ``render`` is looked up at call time, so that a patched module-level ``render`` is the one used.
GENERATOR = Generator("shapes", SHAPE_CLASSES, lambda n, seed: render(n, seed), SPLIT_SIZES, SPLIT_SEEDS, GENERATOR_VERSION)


def generate_split(split: str, n: int | None = None, use_disk_cache: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``train`` (50k), ``val`` (5k) or ``test`` (10k) split, from the disk cache when present.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: Number of images (default: the split's standard size).
        use_disk_cache: Read/write ``cache_dir()/shapes/*.npz`` (atomic writes). A cache file that is
            damaged or does not hold exactly this split (length, dtypes, label range) is regenerated
            with a ``RuntimeWarning`` naming it; cache files are never unpickled.
    """
    return GENERATOR.split(split, n, use_disk_cache)


def load_shapes(split: str, root: Path, download: bool) -> ImageDataset:
    """The ``shapes`` loader of the registry (``root`` and ``download`` are unused: it renders offline)."""
    return GENERATOR.load(split, root, download)
