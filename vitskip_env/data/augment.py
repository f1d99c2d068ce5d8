"""Batched, device-side augmentation of uint8 image batches (no per-image Python loop), and random block masks.

:func:`random_block_mask` is the one generator of random execute masks: the random skips of the
backbone's evaluation (:func:`random_skip_mask`) and the benchmark's random contender
(``vitskip_env.measure.contenders.random_masks_like``) both draw theirs from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Label-preserving augmentation per dataset, where the default (pad 4, flip) would change the label:
#: a flip swaps which ``relations`` key is on the left, and a wide reflected crop can mirror a key.
#: On ``pointers`` the class is a grid cell, so a shift stays within a pixel.
AUGMENT_KWARGS: dict[str, dict[str, int | bool]] = {
    "relations": {"pad": 2, "flip": False},
    "pointers": {"pad": 1, "flip": False},
}


def augment_kwargs(dataset: str) -> dict[str, int | bool]:
    """Keyword arguments of :func:`random_crop_flip` that keep ``dataset``'s labels true."""
    return dict(AUGMENT_KWARGS.get(dataset, {"pad": 4, "flip": True}))


def random_crop_flip(
    images: torch.Tensor, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop after reflection padding by ``pad`` pixels, then random horizontal flip.

    Args:
        images: ``(B, C, H, W)`` batch (any dtype; uint8 stays uint8).
        pad: Padding on each side; each image is shifted by up to ``pad`` pixels.
        flip: Flip each image left-right with probability 1/2.
        generator: Torch generator on the images' device, for reproducible augmentation.

    Returns:
        A new batch of the same shape and dtype.
    """
    b, c, h, w = images.shape
    dev = images.device
    out = images
    if pad > 0:
        padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype)
        dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        rows = (torch.arange(h, device=dev)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=dev)[None, :] + dx[:, None])[:, None, None, :]
        bidx = torch.arange(b, device=dev)[:, None, None, None]
        cidx = torch.arange(c, device=dev)[None, :, None, None]
        out = padded[bidx, cidx, rows, cols]
    if flip:
        flips = torch.rand(b, device=dev, generator=generator) < 0.5
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out


def random_block_mask(
    batch: int,
    depth: int,
    count: int | torch.Tensor,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``bool (batch, depth)``: True at exactly ``count`` blocks per row, chosen uniformly at random.

    The one random-mask generator: every block of a row gets a random rank (a uniformly random
    permutation drawn from ``generator``), and the blocks ranked below ``count`` are picked.

    Args:
        batch: Rows.
        depth: Blocks per row.
        count: Blocks to pick per row: an ``int`` or an integer tensor ``(batch, 1)`` on ``device``.
        device: Where the random scores are drawn (the generator's device).
        generator: Torch generator for reproducible masks.
    """
    scores = torch.rand(batch, depth, device=device, generator=generator)
    ranks = scores.argsort(1).argsort(1)
    return ranks < count


def random_skip_mask(
    batch: int, depth: int, skip_fraction: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """``bool (batch, depth)`` execute mask skipping exactly ``round(skip_fraction * depth)`` random blocks per image."""
    if not 0.0 <= skip_fraction <= 1.0:
        raise ValueError(f"skip_fraction must be in [0, 1], got {skip_fraction}")
    return ~random_block_mask(batch, depth, round(skip_fraction * depth), device, generator)
