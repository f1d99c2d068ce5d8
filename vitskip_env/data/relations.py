"""``relations``: a built-in procedural task whose class depends on relations between objects.

Each 32x32 RGB scene holds two large **key** objects and up to five small distractors. The class
answers three questions about the two keys at once:

- the **kind of the left key** (circle, square, triangle, plus, ring or star; the right key's kind
  is random and may be the same),
- whether the left key is **above** the right one,
- whether the two keys have the **same colour** (four palette colours).

6 x 2 x 2 = 24 balanced classes. No single patch holds the answer: a model has to find both keys,
compare their positions and colours, and read the kind of the one that is further left, so
information has to be combined across patches (attention over several layers), unlike ``shapes``
where one object's silhouette is the class.

Every sample has a difficulty in [0, 1], the mean of the five factors actually used to draw it:

==============  ========================================================================
factor          what grows with it
==============  ========================================================================
margin          the keys come closer in x and in y (smallest gap 8 px -> 2 px)
size            the keys shrink (radius ~6.2 px -> ~4.8 px)
clutter         more distractors (0 -> 5), larger (radius ~1.5 -> ~2.7 px), more often in a key colour
noise           per-pixel Gaussian noise (sigma 0.02 -> 0.09)
contrast        key colours fade towards the background and are jittered
==============  ========================================================================

Rendering is vectorised in torch at 2x supersampling and is a pure function of ``(n, seed)``;
``train`` / ``val`` / ``test`` use disjoint seeds, and splits are cached on disk
(``cache_dir()/relations``, validated, regenerated when damaged).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ImageDataset
from .procedural import Generator, balanced_labels
from .shapes import SHAPE_CLASSES, _shape_mask, _unit_vectors

#: Shape kinds a key can have (indices into ``shapes.SHAPE_CLASSES``).
KEY_KINDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
#: The four key colours (RGB in [0, 1]): red, green, blue, yellow.
PALETTE = torch.tensor([[0.92, 0.16, 0.14], [0.14, 0.78, 0.22], [0.20, 0.32, 0.96], [0.96, 0.86, 0.12]])
COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow")
MAX_DISTRACTORS = 5
IMAGE_SIZE = 32
SPLIT_SIZES = {"train": 50_000, "val": 5_000, "test": 10_000}
#: Disjoint from each other and from the ``shapes`` seeds.
SPLIT_SEEDS = {"train": 31_261_129, "val": 51_261_129, "test": 81_261_129}
#: Bump when rendering changes, so stale disk caches are never reused.
GENERATOR_VERSION = 1
FACTORS: tuple[str, ...] = ("margin", "size", "clutter", "noise", "contrast")
_SS = 2
_CHUNK = 2_000


def class_name(label: int) -> str:
    """``"circle left, above, same colour"`` for a label in ``0..23``."""
    kind, above, same = decode(label)
    return f"{SHAPE_CLASSES[KEY_KINDS[kind]]} left, {'above' if above else 'below'}, {'same' if same else 'different'} colour"


def decode(label: int) -> tuple[int, bool, bool]:
    """``(left key kind index into KEY_KINDS, left key above, same colour)`` of a label."""
    if not 0 <= label < len(KEY_KINDS) * 4:
        raise ValueError(f"relations label must be in 0..{len(KEY_KINDS) * 4 - 1}, got {label}")
    return label // 4, bool(label // 2 % 2), bool(label % 2)


RELATION_CLASSES: tuple[str, ...] = tuple(class_name(i) for i in range(len(KEY_KINDS) * 4))


def render(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``n`` scenes deterministically from ``seed`` (no caching).

    Returns:
        ``images`` uint8 (n, 3, 32, 32), ``labels`` int64 (n,) balanced over the 24 classes,
        ``difficulty`` float32 (n,) in [0, 1] (the mean of the five factors).
    """
    scenes = render_scenes(n, seed)
    return scenes["images"], scenes["labels"], scenes["factors"].mean(1).astype(np.float32)


def render_scenes(n: int, seed: int) -> dict[str, np.ndarray]:
    """As :func:`render`, with what was drawn: one array per name, row ``i`` describing image ``i``.

    ``images``, ``labels``; ``factors`` (n, 5) in the order of :data:`FACTORS`; ``key_xy`` (n, 2, 2)
    the centres (x, y) in pixels of the left and the right key; ``key_radius`` (n, 2);
    ``key_kind`` (n, 2) indices into ``shapes.SHAPE_CLASSES``; ``key_colour`` (n, 2) indices into
    :data:`PALETTE`; ``distractors`` (n,) their number. Useful for analysis (which relation or
    factor a policy spends depth on) and for checking the labels.
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    g = torch.Generator().manual_seed(seed)
    labels = balanced_labels(n, len(RELATION_CLASSES), g)
    parts = []
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        chunk_g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        parts.append(_render_chunk(labels[start:stop], chunk_g))
    out = {name: torch.cat([p[name] for p in parts]).numpy() for name in parts[0]}
    out["labels"] = labels.numpy().astype(np.int64)
    return out


def _grid(n: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = (torch.arange(IMAGE_SIZE * scale, dtype=torch.float32) + 0.5) / scale
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return xx.expand(n, -1, -1), yy.expand(n, -1, -1)


def _alpha(mask: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(mask[:, None].to(torch.float32), _SS)


def _object_mask(
    kinds: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """Supersampled coverage of one object per image (shape ``kinds``, randomly rotated)."""
    n = kinds.numel()
    xs, ys = _grid(n, _SS)
    rot = torch.rand(n, generator=g) * 2 * math.pi
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    cos, sin = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
    u = (dx * cos + dy * sin) / radius[:, None, None]
    v = (-dx * sin + dy * cos) / radius[:, None, None]
    mask = torch.zeros(n, IMAGE_SIZE * _SS, IMAGE_SIZE * _SS, dtype=torch.bool)
    for kind in kinds.unique().tolist():
        idx = (kinds == kind).nonzero().squeeze(1)
        mask[idx] = _shape_mask(int(kind), u[idx], v[idx])
    return mask


def _paint(img: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    return torch.lerp(img, colour[:, :, None, None].expand_as(img), _alpha(mask))


def _key_positions(left_above: torch.Tensor, radius: torch.Tensor, f_margin: torch.Tensor, g: torch.Generator):
    """Centres of the left and right keys: left strictly left, above/below as the label says."""
    n = radius.shape[0]
    r_max = radius.max(1).values
    lo, hi = r_max + 1.0, IMAGE_SIZE - r_max - 1.0
    span = hi - lo
    margin = 8.0 - 6.0 * f_margin
    gap_x = margin + torch.rand(n, generator=g) * (span - margin).clamp_min(0)
    gap_y = margin + torch.rand(n, generator=g) * (span - margin).clamp_min(0)
    # Keys may touch but not cover each other: push them apart along their own direction.
    need = 1.9 * r_max
    dist = torch.sqrt(gap_x**2 + gap_y**2)
    grow = (need / dist).clamp_min(1.0)
    gap_x, gap_y = torch.minimum(gap_x * grow, span), torch.minimum(gap_y * grow, span)
    mid_x = lo + gap_x / 2 + torch.rand(n, generator=g) * (span - gap_x)
    mid_y = lo + gap_y / 2 + torch.rand(n, generator=g) * (span - gap_y)
    x_left, x_right = mid_x - gap_x / 2, mid_x + gap_x / 2
    sign = torch.where(left_above, -1.0, 1.0)  # image rows grow downwards: above = smaller y
    y_left, y_right = mid_y + sign * gap_y / 2, mid_y - sign * gap_y / 2
    return (x_left, y_left), (x_right, y_right)


def _render_chunk(labels: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Render one scene per label; returns the arrays of :func:`render_scenes` but ``labels``."""
    n = labels.numel()
    base = torch.rand(n, generator=g) ** 1.25
    factors = (base[:, None] + 0.18 * torch.randn(n, len(FACTORS), generator=g)).clamp(0.0, 1.0)
    f_margin, f_size, f_clut, f_noise, f_con = factors.unbind(1)
    left_kind = labels // 4
    left_above = (labels // 2 % 2).bool()
    same = (labels % 2).bool()

    # Background: a muted grey-ish gradient, so that every palette colour stands out from it.
    x1, y1 = _grid(n, 1)
    grey = 0.3 + 0.25 * torch.rand(n, 1, generator=g)
    bg0 = (grey + 0.06 * _unit_vectors(n, g)).clamp(0, 1)
    bg1 = (bg0 + 0.12 * _unit_vectors(n, g)).clamp(0, 1)
    ang = torch.rand(n, generator=g) * 2 * math.pi
    t = ((x1 - 16) * torch.cos(ang)[:, None, None] + (y1 - 16) * torch.sin(ang)[:, None, None]) / 32 + 0.5
    img = torch.lerp(bg0[:, :, None, None], bg1[:, :, None, None], t.clamp(0, 1)[:, None])
    bg_mid = 0.5 * (bg0 + bg1)

    # Distractors first (keys are drawn over them): small, more of them, larger and more often in
    # a key colour as the clutter factor grows.
    n_dis = (f_clut * MAX_DISTRACTORS + torch.rand(n, generator=g)).floor().clamp(max=MAX_DISTRACTORS)
    for slot in range(MAX_DISTRACTORS):
        active = n_dis > slot
        kinds = torch.randint(len(SHAPE_CLASSES), (n,), generator=g)
        radius = (1.5 + 1.2 * f_clut) * (0.85 + 0.3 * torch.rand(n, generator=g))
        cx = 2.0 + torch.rand(n, generator=g) * (IMAGE_SIZE - 4.0)
        cy = 2.0 + torch.rand(n, generator=g) * (IMAGE_SIZE - 4.0)
        in_palette = torch.rand(n, generator=g) < 0.8 * f_clut
        colour = torch.where(
            in_palette[:, None], PALETTE[torch.randint(len(PALETTE), (n,), generator=g)], torch.rand(n, 3, generator=g)
        )
        mask = _object_mask(kinds, cx, cy, radius, g) & active[:, None, None]
        img = _paint(img, mask, colour)

    # The two keys.
    radius = (6.2 - 1.4 * f_size)[:, None] * (0.92 + 0.16 * torch.rand(n, 2, generator=g))
    (xl, yl), (xr, yr) = _key_positions(left_above, radius, f_margin, g)
    kinds_right = torch.randint(len(KEY_KINDS), (n,), generator=g)
    colour_left = torch.randint(len(PALETTE), (n,), generator=g)
    colour_right = torch.where(same, colour_left, (colour_left + 1 + torch.randint(3, (n,), generator=g)) % len(PALETTE))
    kind_table = torch.tensor(KEY_KINDS)
    for kinds, colour_idx, cx, cy, r in (
        (kind_table[left_kind], colour_left, xl, yl, radius[:, 0]),
        (kind_table[kinds_right], colour_right, xr, yr, radius[:, 1]),
    ):
        fade = (0.45 * f_con)[:, None]
        colour = torch.lerp(PALETTE[colour_idx], bg_mid, fade) + 0.05 * f_con[:, None] * torch.randn(n, 3, generator=g)
        img = _paint(img, _object_mask(kinds, cx, cy, r, g), colour.clamp(0, 1))

    sigma = 0.02 + 0.07 * f_noise
    img = img + sigma[:, None, None, None] * torch.randn(img.shape, generator=g)
    return {
        "images": (img.clamp(0, 1) * 255).round().to(torch.uint8),
        "factors": factors,
        "key_xy": torch.stack([torch.stack([xl, yl], 1), torch.stack([xr, yr], 1)], 1),
        "key_radius": radius,
        "key_kind": torch.stack([kind_table[left_kind], kind_table[kinds_right]], 1),
        "key_colour": torch.stack([colour_left, colour_right], 1),
        "distractors": n_dis.to(torch.int64),
    }


# ``render`` is looked up at call time, so that a patched module-level ``render`` is the one used.
GENERATOR = Generator(
    "relations", RELATION_CLASSES, lambda n, seed: render(n, seed), SPLIT_SIZES, SPLIT_SEEDS, GENERATOR_VERSION
)


def generate_split(split: str, n: int | None = None, use_disk_cache: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``train`` (50k), ``val`` (5k) or ``test`` (10k) split, from the validated disk cache when present."""
    return GENERATOR.split(split, n, use_disk_cache)


def load_relations(split: str, root: Path, download: bool) -> ImageDataset:
    """The ``relations`` loader of the registry (``root`` and ``download`` are unused: it renders offline)."""
    return GENERATOR.load(split, root, download)
