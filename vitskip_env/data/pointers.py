"""``pointers``: a built-in procedural task that takes a variable number of steps: follow the arrows.

The 32x32 RGB image is a 4 x 4 grid of 8 x 8 px cells (jittered); a cell holds nothing, an
**arrow** (pointing up, down, left or right) or a **circle**. One arrow is **red**: the start.
An arrow leads to the nearest occupied cell in its direction; following the arrows from the red
one, the path ends at a circle. **The class is the cell of that circle** (16 classes, balanced).

The path has 1 to 6 hops. Decoy paths (arrows leading to other circles) and stray arrows fill
other cells, so neither "the only circle" nor "a circle an arrow points at" gives the answer: the
path has to be followed, one hop after the other, and how many hops an image needs is part of the
image. Information has to move across the grid once per hop (attention that depends on where the
previous hop arrived), so longer paths should take more blocks: a per-image depth demand.

Every sample has a difficulty in [0, 1], the mean of five factors:

==============  ========================================================================
factor          what grows with it
==============  ========================================================================
hops            the path from the red arrow is longer (1 -> 6 hops)
clutter         more decoy paths and stray arrows (0 -> 6 extra objects)
jitter          objects move off their cell centre (0 -> 1.5 px) and vary in size
noise           per-pixel Gaussian noise (sigma 0.02 -> 0.07)
contrast        object colours fade towards the background (up to 30 %) and are jittered
==============  ========================================================================

Deterministic from ``(n, seed)``; ``train`` / ``val`` / ``test`` use disjoint seeds; splits are
cached on disk (``cache_dir()/pointers``, validated, regenerated when damaged).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .drawing import muted_background
from .procedural import Generator, render_chunked, scene_arrays

GRID = 4
CELL = 8
IMAGE_SIZE = GRID * CELL
MAX_HOPS = 6
MAX_EXTRA = 6
NUM_CLASSES = GRID * GRID
#: Directions as (dx, dy) in cells: up, right, down, left (image rows grow downwards).
DIRECTIONS: tuple[tuple[int, int], ...] = ((0, -1), (1, 0), (0, 1), (-1, 0))
DIRECTION_NAMES: tuple[str, ...] = ("up", "right", "down", "left")
#: Red (the start), then the colours of every other object.
PALETTE = torch.tensor([[0.92, 0.16, 0.14], [0.14, 0.78, 0.22], [0.20, 0.32, 0.96], [0.96, 0.86, 0.12]])
EMPTY, ARROW, CIRCLE = 0, 1, 2
SPLIT_SIZES = {"train": 50_000, "val": 5_000, "test": 10_000}
#: Disjoint from each other and from the other built-in datasets' seeds.
SPLIT_SEEDS = {"train": 32_261_129, "val": 52_261_129, "test": 82_261_129}
GENERATOR_VERSION = 1
FACTORS: tuple[str, ...] = ("hops", "clutter", "jitter", "noise", "contrast")
POINTER_CLASSES: tuple[str, ...] = tuple(f"path ends at row {c // GRID}, column {c % GRID}" for c in range(NUM_CLASSES))
_SS = 2
_CHUNK = 2_000


def follow(kind: np.ndarray, direction: np.ndarray, start: int) -> tuple[int, int]:
    """Follow the arrows of one grid from cell ``start``; returns ``(end cell, hops)``.

    ``kind`` and ``direction`` are ``(16,)`` arrays (row-major cells). An arrow leads to the nearest
    occupied cell in its direction. Raises ``ValueError`` when the path leaves the grid or loops.
    """
    cell, hops = start, 0
    while kind[cell] == ARROW:
        dx, dy = DIRECTIONS[int(direction[cell])]
        x, y = cell % GRID + dx, cell // GRID + dy
        while 0 <= x < GRID and 0 <= y < GRID and kind[y * GRID + x] == EMPTY:
            x, y = x + dx, y + dy
        if not (0 <= x < GRID and 0 <= y < GRID):
            raise ValueError(f"the arrow in cell {cell} leads off the grid")
        cell, hops = y * GRID + x, hops + 1
        if hops > GRID * GRID:
            raise ValueError("the arrows loop")
    return cell, hops


def _predecessor(cell: int, kind: np.ndarray, reserved: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A free cell from which an arrow would lead to ``cell``, and that arrow's direction (or None)."""
    options = []
    for d, (dx, dy) in enumerate(DIRECTIONS):
        # The predecessor lies opposite to the arrow's direction, with only empty cells in between.
        x, y, between = cell % GRID - dx, cell // GRID - dy, []
        while 0 <= x < GRID and 0 <= y < GRID:
            c = y * GRID + x
            if kind[c] != EMPTY:
                break
            if not reserved[c]:
                options.append((c, d, list(between)))
            between.append(c)
            x, y = x - dx, y - dy
    if not options:
        return None
    c, d, between = options[rng.integers(len(options))]
    reserved[between] = True  # cells an arrow jumps over must stay empty
    return c, d


def _scene(end: int, hops: int, extra: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One grid whose red path ends at ``end`` after about ``hops`` hops; returns kind, direction, start, hops."""
    for _ in range(100):
        kind = np.zeros(NUM_CLASSES, dtype=np.int64)
        direction = np.zeros(NUM_CLASSES, dtype=np.int64)
        reserved = np.zeros(NUM_CLASSES, dtype=bool)
        kind[end] = CIRCLE
        cell, made = end, 0
        while made < hops:
            step = _predecessor(cell, kind, reserved, rng)
            if step is None:
                break
            cell, direction[step[0]] = step
            kind[cell], made = ARROW, made + 1
        if made == 0:
            continue
        start = cell
        # Decoys: another circle with a short path of its own, then stray arrows and circles.
        for _ in range(extra):
            cells = np.flatnonzero((kind == EMPTY) & ~reserved)
            if cells.size == 0:
                break
            c = int(rng.choice(cells))
            if rng.random() < 0.35:
                kind[c] = CIRCLE
                step = _predecessor(c, kind, reserved, rng)
                if step is not None and rng.random() < 0.8:
                    kind[step[0]], direction[step[0]] = ARROW, step[1]
            else:
                kind[c], direction[c] = ARROW, rng.integers(4)
        try:
            got_end, got_hops = follow(kind, direction, start)
        except ValueError:
            continue
        if got_end == end:
            return kind, direction, start, got_hops
    raise RuntimeError("could not build a pointers scene in 100 tries; please report this")


def render(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``n`` grids deterministically from ``seed`` (no caching).

    Returns:
        ``images`` uint8 (n, 3, 32, 32), ``labels`` int64 (n,) balanced over the 16 cells,
        ``difficulty`` float32 (n,) in [0, 1] (the mean of the five factors).
    """
    return scene_arrays(render_scenes(n, seed))


def render_scenes(n: int, seed: int) -> dict[str, np.ndarray]:
    """As :func:`render`, with what was drawn: ``factors`` (n, 5) in the order of :data:`FACTORS`,
    ``kind`` (n, 16) per cell (0 empty, 1 arrow, 2 circle), ``direction`` (n, 16) indices into
    :data:`DIRECTIONS`, ``start`` (n,) the red arrow's cell and ``hops`` (n,) the path's length."""
    return render_chunked(n, seed, NUM_CLASSES, _render_chunk, _CHUNK)


def _render_chunk(labels: torch.Tensor, g: torch.Generator) -> dict[str, np.ndarray]:
    n = labels.numel()
    base = torch.rand(n, generator=g) ** 1.1
    factors = (base[:, None] + 0.18 * torch.randn(n, len(FACTORS), generator=g)).clamp(0.0, 1.0)
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))
    want_hops = 1 + np.floor(factors[:, 0].numpy() * MAX_HOPS).clip(0, MAX_HOPS - 1).astype(int)
    extra = np.floor(factors[:, 1].numpy() * (MAX_EXTRA + 1)).clip(0, MAX_EXTRA).astype(int)
    kind = np.zeros((n, NUM_CLASSES), dtype=np.int64)
    direction = np.zeros((n, NUM_CLASSES), dtype=np.int64)
    start, hops = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i in range(n):
        kind[i], direction[i], start[i], hops[i] = _scene(int(labels[i]), int(want_hops[i]), int(extra[i]), rng)
    factors[:, 0] = torch.from_numpy((hops - 1) / (MAX_HOPS - 1)).float()  # the hops drawn, not asked
    images = _draw(torch.from_numpy(kind), torch.from_numpy(direction), torch.from_numpy(start), factors, g)
    return {"images": images.numpy(), "factors": factors.numpy(), "kind": kind, "direction": direction,
            "start": start, "hops": hops}  # fmt: skip


def _draw(kind: torch.Tensor, direction: torch.Tensor, start: torch.Tensor, factors: torch.Tensor, g: torch.Generator):
    n = kind.shape[0]
    _, _, f_jit, f_noise, f_con = factors.unbind(1)
    img, bg_mid = muted_background(n, IMAGE_SIZE, g)
    coords = (torch.arange(IMAGE_SIZE * _SS, dtype=torch.float32) + 0.5) / _SS
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    colour_idx = 1 + torch.randint(len(PALETTE) - 1, (n, NUM_CLASSES), generator=g)
    colour_idx[torch.arange(n), start] = 0
    for cell in range(NUM_CLASSES):
        jitter = 1.5 * f_jit[:, None] * (2 * torch.rand(n, 2, generator=g) - 1)
        cx = (cell % GRID + 0.5) * CELL + jitter[:, 0]
        cy = (cell // GRID + 0.5) * CELL + jitter[:, 1]
        radius = 3.1 * (1.0 - 0.2 * f_jit * torch.rand(n, generator=g))
        fade = 0.3 * f_con[:, None]
        colour = torch.lerp(PALETTE[colour_idx[:, cell]], bg_mid, fade) + 0.05 * f_con[:, None] * torch.randn(
            n, 3, generator=g
        )
        rows = (kind[:, cell] != EMPTY).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        dx = (xs - cx[rows, None, None]) / radius[rows, None, None]
        dy = (ys - cy[rows, None, None]) / radius[rows, None, None]
        # Rotate into the arrow's frame: along = towards where it points, across = sideways.
        d = torch.tensor(DIRECTIONS, dtype=torch.float32)[direction[rows, cell]]
        along = dx * d[:, 0, None, None] + dy * d[:, 1, None, None]
        across = -dx * d[:, 1, None, None] + dy * d[:, 0, None, None]
        arrow = (along >= -0.9) & (along <= 1.0) & (across.abs() <= 0.62 * (1.0 - along) / 1.9)
        circle = dx * dx + dy * dy <= 0.8
        mask = torch.where((kind[rows, cell] == ARROW)[:, None, None], arrow, circle)
        alpha = F.avg_pool2d(mask[:, None].to(torch.float32), _SS)
        img[rows] = torch.lerp(img[rows], colour[rows, :, None, None].clamp(0, 1).expand_as(img[rows]), alpha)
    sigma = 0.02 + 0.05 * f_noise
    img = img + sigma[:, None, None, None] * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


# ``render`` is looked up at call time, so that a patched module-level ``render`` is the one used.
GENERATOR = Generator(
    "pointers", POINTER_CLASSES, lambda n, seed: render(n, seed), SPLIT_SIZES, SPLIT_SEEDS, GENERATOR_VERSION
)
