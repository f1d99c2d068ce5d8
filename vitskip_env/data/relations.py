"""``relations``: a built-in procedural task whose class depends on relations between objects.

Each 32x32 RGB scene holds three key objects, one **red**, one green, blue or yellow **nearer** to
the red one and one **farther** from it (the third colour), plus up to five small distractors in
muted colours. The class is about the object nearest to the red one:

- its **kind** (circle, square, triangle, plus, ring or star; the other two keys' kinds are random),
- its **colour** (green, blue or yellow),
- whether it lies **left** of the red object.

6 x 3 x 2 = 36 balanced classes. Which object that is depends on where the red one is: a model
has to find the red object, compare the other two objects' distances to it, and only then read
the nearer one's kind, colour and side. That is two dependent steps of gathering information
across patches (attention that depends on what earlier attention found), unlike ``shapes``, where
one object's silhouette is the class. A model that cannot compare the distances can still pick one
of the two candidates (about half of the top-1), so the task can be learned step by step.

Every sample has a difficulty in [0, 1], the mean of the five factors actually used to draw it:

==============  ========================================================================
factor          what grows with it
==============  ========================================================================
margin          the distances to red become alike (farther / nearer about 2.0 -> 1.15)
size            the keys shrink (radius ~5.2 px -> ~4.0 px)
clutter         more distractors (0 -> 5), larger (radius ~1.5 -> ~2.7 px)
noise           per-pixel Gaussian noise (sigma 0.02 -> 0.09)
contrast        key colours fade towards the background and are jittered
==============  ========================================================================

Rendering is vectorised in torch at 2x supersampling and is a pure function of ``(n, seed)``;
``train`` / ``val`` / ``test`` use disjoint seeds, and splits are cached on disk
(``cache_dir()/relations``, validated, regenerated when damaged).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .drawing import SHAPE_CLASSES, muted_background, rotated_frame, shape_mask
from .procedural import Generator, render_chunked, scene_arrays

#: Shape kinds a key can have (indices into ``shapes.SHAPE_CLASSES``).
KEY_KINDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
#: The key colours (RGB in [0, 1]): red (the anchor), green, blue, yellow.
PALETTE = torch.tensor([[0.92, 0.16, 0.14], [0.14, 0.78, 0.22], [0.20, 0.32, 0.96], [0.96, 0.86, 0.12]])
COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow")
MAX_DISTRACTORS = 5
IMAGE_SIZE = 32
SPLIT_SIZES = {"train": 50_000, "val": 5_000, "test": 10_000}
#: Disjoint from each other and from the ``shapes`` seeds.
SPLIT_SEEDS = {"train": 31_261_129, "val": 51_261_129, "test": 81_261_129}
#: Bump when rendering changes, so stale disk caches are never reused.
GENERATOR_VERSION = 2
FACTORS: tuple[str, ...] = ("margin", "size", "clutter", "noise", "contrast")
NUM_CLASSES = len(KEY_KINDS) * (len(PALETTE) - 1) * 2
_SS = 2
_CHUNK = 2_000
_MAX_TRIES = 2_000


def decode(label: int) -> tuple[int, int, bool]:
    """``(kind index into KEY_KINDS, colour index into PALETTE (1-3), left of red)`` of the nearest object."""
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"relations label must be in 0..{NUM_CLASSES - 1}, got {label}")
    return label // 6, 1 + label // 2 % 3, bool(label % 2)


def decode_tensor(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`decode` of a label tensor: kind indices, colour indices, left-of-red booleans."""
    return labels // 6, 1 + labels // 2 % 3, (labels % 2).bool()


def class_name(label: int) -> str:
    """``"nearest to red: green circle, left"`` for a label in ``0..35``."""
    kind, colour, left = decode(label)
    return f"nearest to red: {COLOUR_NAMES[colour]} {SHAPE_CLASSES[KEY_KINDS[kind]]}, {'left' if left else 'right'}"


RELATION_CLASSES: tuple[str, ...] = tuple(class_name(i) for i in range(NUM_CLASSES))


def render(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``n`` scenes deterministically from ``seed`` (no caching).

    Returns:
        ``images`` uint8 (n, 3, 32, 32), ``labels`` int64 (n,) balanced over the 36 classes,
        ``difficulty`` float32 (n,) in [0, 1] (the mean of the five factors).
    """
    return scene_arrays(render_scenes(n, seed))


def render_scenes(n: int, seed: int) -> dict[str, np.ndarray]:
    """As :func:`render`, with what was drawn: one array per name, row ``i`` describing image ``i``.

    ``images``, ``labels``; ``factors`` (n, 5) in the order of :data:`FACTORS`; for the red key, the
    nearer and the farther one (in that order): ``key_xy`` (n, 3, 2) centres (x, y) in pixels,
    ``key_radius`` (n, 3), ``key_kind`` (n, 3) indices into ``shapes.SHAPE_CLASSES``, ``key_colour``
    (n, 3) indices into :data:`PALETTE`; ``distractors`` (n,) their number. Useful for analysis (which relation or
    factor a policy spends depth on) and for checking the labels.
    """
    return render_chunked(n, seed, NUM_CLASSES, _render_chunk, _CHUNK)


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
    u, v = rotated_frame(xs, ys, cx, cy, radius, torch.rand(n, generator=g) * 2 * math.pi)
    mask = torch.zeros(n, IMAGE_SIZE * _SS, IMAGE_SIZE * _SS, dtype=torch.bool)
    for kind in kinds.unique().tolist():
        idx = (kinds == kind).nonzero().squeeze(1)
        mask[idx] = shape_mask(int(kind), u[idx], v[idx])
    return mask


def _paint(img: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    return torch.lerp(img, colour[:, :, None, None].expand_as(img), _alpha(mask))


def _place(
    label_left: torch.Tensor, radius: torch.Tensor, f_margin: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``(n, 3, 2)`` of red, the object nearer to it and the farther one, and the margin used.

    Red anywhere; the nearer object at ``1.9 * radius`` to that plus 6 px from it, on the side the
    label says; the farther one about ``ratio`` times as far (``ratio`` 2.0 for margin 0 down to
    1.15 for margin 1). A row whose objects leave the image or overlap is drawn again; a row that
    keeps failing (a large ratio does not fit in 32 px) gets a smaller ratio. The returned margin
    factor is computed from the distances actually drawn, so it says what the image looks like.
    """
    n = radius.shape[0]
    r_max = radius.max(1).values
    lo, hi = r_max + 1.0, IMAGE_SIZE - r_max - 1.0
    sep = 1.9 * r_max
    ratio = 2.0 - 0.85 * f_margin
    xy = torch.zeros(n, 3, 2)
    todo = torch.arange(n)
    for attempt in range(_MAX_TRIES):
        k = todo.numel()
        red = lo[todo, None] + torch.rand(k, 2, generator=g) * (hi - lo)[todo, None]
        d_near = sep[todo] + 6.0 * torch.rand(k, generator=g)
        d_far = ratio[todo] * d_near * (1.0 + 0.15 * torch.rand(k, generator=g))
        a_near, a_far = (2 * math.pi * torch.rand(k, 2, generator=g)).unbind(1)
        near = red + d_near[:, None] * torch.stack([torch.cos(a_near).abs(), torch.sin(a_near)], 1)
        near[:, 0] = torch.where(label_left[todo], 2 * red[:, 0] - near[:, 0], near[:, 0])  # mirror to the left
        far = red + d_far[:, None] * torch.stack([torch.cos(a_far), torch.sin(a_far)], 1)
        cand = torch.stack([red, near, far], 1)
        inside = ((cand >= lo[todo, None, None]) & (cand <= hi[todo, None, None])).all(2).all(1)
        ok = inside & ((near - far).norm(dim=1) >= sep[todo])
        xy[todo[ok]] = cand[ok]
        todo = todo[~ok]
        if todo.numel() == 0:
            break
        if attempt % 50 == 49:
            ratio[todo] = (ratio[todo] * 0.95).clamp_min(1.1)
    else:
        raise RuntimeError(f"could not place {todo.numel()} relations scenes in {_MAX_TRIES} tries; please report this")
    used = (xy[:, 2] - xy[:, 0]).norm(dim=1) / (xy[:, 1] - xy[:, 0]).norm(dim=1)
    return xy, ((2.0 - used) / 0.85).clamp(0.0, 1.0)


def _render_chunk(labels: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Render one scene per label; returns the arrays of :func:`render_scenes` but ``labels``."""
    n = labels.numel()
    base = torch.rand(n, generator=g) ** 1.25
    factors = (base[:, None] + 0.18 * torch.randn(n, len(FACTORS), generator=g)).clamp(0.0, 1.0)
    f_margin, f_size, f_clut, f_noise, f_con = factors.unbind(1)
    near_kind, near_colour, near_left = decode_tensor(labels)

    # Background: a muted grey-ish gradient, so that every palette colour stands out from it.
    img, bg_mid = muted_background(n, IMAGE_SIZE, g)

    # Distractors first (keys are drawn over them): small, in muted colours; more of them and
    # larger as the clutter factor grows.
    n_dis = (f_clut * MAX_DISTRACTORS + torch.rand(n, generator=g)).floor().clamp(max=MAX_DISTRACTORS)
    for slot in range(MAX_DISTRACTORS):
        active = n_dis > slot
        kinds = torch.randint(len(SHAPE_CLASSES), (n,), generator=g)
        radius = (1.5 + 1.2 * f_clut) * (0.85 + 0.3 * torch.rand(n, generator=g))
        cx = 2.0 + torch.rand(n, generator=g) * (IMAGE_SIZE - 4.0)
        cy = 2.0 + torch.rand(n, generator=g) * (IMAGE_SIZE - 4.0)
        colour = torch.lerp(torch.rand(n, 3, generator=g), bg_mid, 0.4)
        mask = _object_mask(kinds, cx, cy, radius, g) & active[:, None, None]
        img = _paint(img, mask, colour)

    # The three keys: red, the one nearer to red (the label's kind, colour and side), the farther one.
    radius = (5.2 - 1.2 * f_size)[:, None] * (0.92 + 0.16 * torch.rand(n, 3, generator=g))
    xy, factors[:, 0] = _place(near_left, radius, f_margin, g)
    other = torch.randint(len(PALETTE) - 2, (n,), generator=g)  # the farther colour: not red, not the nearer's
    far_colour = 1 + (near_colour - 1 + 1 + other) % (len(PALETTE) - 1)
    key_colour = torch.stack([torch.zeros_like(near_colour), near_colour, far_colour], 1)
    kind_table = torch.tensor(KEY_KINDS)
    key_kind = torch.stack(
        [
            kind_table[torch.randint(len(KEY_KINDS), (n,), generator=g)],
            kind_table[near_kind],
            kind_table[torch.randint(len(KEY_KINDS), (n,), generator=g)],
        ],
        1,
    )
    fade = (0.45 * f_con)[:, None]
    for key in range(3):
        colour = torch.lerp(PALETTE[key_colour[:, key]], bg_mid, fade) + 0.05 * f_con[:, None] * torch.randn(n, 3, generator=g)
        mask = _object_mask(key_kind[:, key], xy[:, key, 0], xy[:, key, 1], radius[:, key], g)
        img = _paint(img, mask, colour.clamp(0, 1))

    sigma = 0.02 + 0.07 * f_noise
    img = img + sigma[:, None, None, None] * torch.randn(img.shape, generator=g)
    return {
        "images": (img.clamp(0, 1) * 255).round().to(torch.uint8),
        "factors": factors,
        "key_xy": xy,
        "key_radius": radius,
        "key_kind": key_kind,
        "key_colour": key_colour,
        "distractors": n_dis.to(torch.int64),
    }


# ``render`` is looked up at call time, so that a patched module-level ``render`` is the one used.
GENERATOR = Generator(
    "relations", RELATION_CLASSES, lambda n, seed: render(n, seed), SPLIT_SIZES, SPLIT_SEEDS, GENERATOR_VERSION
)
