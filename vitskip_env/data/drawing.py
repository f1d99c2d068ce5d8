"""Drawing helpers the built-in procedural datasets share: the shape vocabulary and its masks.

Only torch; no dataset logic. ``shapes``, ``relations`` and ``pointers`` render with these.
"""

from __future__ import annotations

import math

import torch

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "star",
    "crescent",
    "bar",
    "ell",
    "frame",
)


def shape_mask(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test for shape ``kind`` in its own frame (unit radius); ``u, v`` are (n, H, W)."""
    rho = torch.sqrt(u * u + v * v)
    cheb = torch.maximum(u.abs(), v.abs())
    if kind == 0:  # circle
        return rho <= 0.95
    if kind == 1:  # square
        return cheb <= 0.78
    if kind == 2:  # equilateral triangle, circumradius 1
        s3 = math.sqrt(3.0)
        return (v >= -0.5) & (s3 * u + v <= 1.0) & (-s3 * u + v <= 1.0)
    if kind == 3:  # plus
        return ((u.abs() <= 0.28) & (v.abs() <= 0.95)) | ((v.abs() <= 0.28) & (u.abs() <= 0.95))
    if kind == 4:  # ring
        return (rho <= 0.95) & (rho >= 0.55)
    if kind == 5:  # five-pointed star
        phase = torch.remainder(torch.atan2(v, u) * (5.0 / (2.0 * math.pi)), 1.0)
        return rho <= 0.42 + 0.58 * (2.0 * phase - 1.0).abs()
    if kind == 6:  # crescent
        return (rho <= 0.95) & ((u - 0.45) ** 2 + v * v > 0.72**2)
    if kind == 7:  # bar
        return (u.abs() <= 0.95) & (v.abs() <= 0.26)
    if kind == 8:  # L shape
        foot = (u >= -0.8) & (u <= 0.8) & (v >= -0.8) & (v <= -0.32)
        stem = (u >= -0.8) & (u <= -0.32) & (v >= -0.8) & (v <= 0.85)
        return foot | stem
    if kind == 9:  # hollow square
        return (cheb <= 0.85) & (cheb >= 0.52)
    raise ValueError(f"shape kind must be in 0..9, got {kind}")


def unit_vectors(n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` random 3-vectors of unit length (colour directions), from ``g``."""
    d = torch.randn(n, 3, generator=g)
    return d / d.norm(dim=1, keepdim=True).clamp_min(1e-6)


def rotated_frame(
    xs: torch.Tensor, ys: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor, rot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(n, H, W)`` in each object's own frame: centred, rotated by ``rot``, unit radius."""
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    cos, sin = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]
    return (dx * cos + dy * sin) / radius[:, None, None], (-dx * sin + dy * cos) / radius[:, None, None]


def muted_background(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey-ish linear gradient between two close colours per image, so palette colours stand out.

    Returns float images ``(n, 3, size, size)`` in [0, 1] and each gradient's middle colour ``(n, 3)``.
    """
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    grey = 0.3 + 0.25 * torch.rand(n, 1, generator=g)
    bg0 = (grey + 0.06 * unit_vectors(n, g)).clamp(0, 1)
    bg1 = (bg0 + 0.12 * unit_vectors(n, g)).clamp(0, 1)
    ang = torch.rand(n, generator=g) * 2 * math.pi
    half = size / 2
    t = ((xx - half) * torch.cos(ang)[:, None, None] + (yy - half) * torch.sin(ang)[:, None, None]) / size + 0.5
    img = torch.lerp(bg0[:, :, None, None], bg1[:, :, None, None], t.clamp(0, 1)[:, None])
    return img, 0.5 * (bg0 + bg1)
