"""Scoring of backbones under an execute mask: the one scorer used by training, RL eval and search."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data import ImageDataset
from ..model import SkippableViT

MaskFn = Callable[[int, torch.Tensor], torch.Tensor]
"""``mask_fn(start, images) -> bool (B, depth)`` execute mask for the batch starting at ``start``."""


@torch.inference_mode()
def evaluate_backbone(
    vit: SkippableViT,
    ds: ImageDataset,
    mask_fn: MaskFn | None = None,
    batch_size: int = 512,
    limit: int | None = None,
) -> dict[str, float]:
    """Top-1 and mean executed blocks of ``vit`` on ``ds`` (the whole split, in order).

    Args:
        vit: The backbone (put in eval mode for the call, restored afterwards).
        ds: Dataset split, on the backbone's device.
        mask_fn: Execute mask per batch; ``None`` runs every block.
        batch_size: Images per forward.
        limit: Score only the first ``limit`` images.
    """
    was_training = vit.training
    vit.eval()
    n = len(ds) if limit is None else min(limit, len(ds))
    correct = 0
    executed = 0.0
    for start in range(0, n, batch_size):
        images = ds.images[start : start + batch_size][: n - start]
        x = ds.normalize(images)
        mask = None if mask_fn is None else mask_fn(start, images)
        logits = vit(x, execute_mask=mask)
        correct += int((logits.argmax(1) == ds.labels[start : start + images.shape[0]]).sum())
        executed += float(mask.sum()) if mask is not None else images.shape[0] * vit.depth
    vit.train(was_training)
    return {"top1": 100.0 * correct / n, "executed_blocks": executed / n, "images": float(n)}


def random_skip_top1(vit: SkippableViT, ds: ImageDataset, skip_fraction: float, seed: int = 0, **kwargs) -> float:
    """Top-1 when every image skips ``round(skip_fraction * depth)`` blocks chosen at random (fixed seed)."""
    from ..data.augment import random_skip_mask

    g = torch.Generator(device=ds.device).manual_seed(seed)

    def mask_fn(start: int, images: torch.Tensor) -> torch.Tensor:
        return random_skip_mask(images.shape[0], vit.depth, skip_fraction, ds.device, g)

    return evaluate_backbone(vit, ds, mask_fn, **kwargs)["top1"]
