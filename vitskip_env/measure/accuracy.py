"""Top-1 of a model on a dataset split: :func:`score`, the one scorer.

Every top-1 figure of the project comes from :func:`score`: the backbone's training evaluation
(``train/backbone.py``), the RL run's final comparison (``train/rl.py``), the benchmark's accuracy
table (:func:`vitskip_env.measure.contenders.accuracy_table`), the reward search's individuals
(``agents.nsga2.reward_worker``) and the per-image rows of a ``DynamicViT``'s skip frame
(``analysis.frames.skip_frame``, with ``per_image=True``). It scores

- a static backbone (every block),
- a backbone under fixed execute masks: one static subset of blocks for every image, one mask per
  image (e.g. random masks), or a function giving each batch its masks,
- a :class:`~vitskip_env.DynamicViT` (its own decisions),

on the first ``n_images`` images of a split, in order, in batches of ``batch_size``, under
``torch.inference_mode()`` and in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..data import ImageDataset
from ..data.augment import random_skip_mask
from ..model import SkippableViT, flops_costs

if TYPE_CHECKING:  # scoring needs no import of the deploy wing: anything not a backbone is run as a DynamicViT
    from ..deploy import DynamicViT

MaskFn = Callable[[int, torch.Tensor], torch.Tensor]
"""``mask_fn(start, images) -> bool (B, depth)`` execute mask for the batch of uint8 ``images`` starting at ``start``."""

Masks = torch.Tensor | MaskFn
"""Fixed execute masks: ``bool (depth,)`` (one subset for every image), ``bool (N, depth)`` (one row
per image, ``N`` at least the scored images) or a :data:`MaskFn`."""


@dataclass(frozen=True)
class Score:
    """What :func:`score` measured.

    Attributes:
        top1: Top-1 accuracy in percent.
        executed_blocks: Mean executed blocks per image.
        executed_frac: ``executed_blocks / depth``.
        compute: Mean share of the block FLOPs spent per image, in [0, 1].
        n_images: Images scored.
        correct: ``bool (n_images,)`` per-image correctness (with ``per_image=True``, else ``None``).
        executed: ``bool (n_images, depth)`` executed blocks per image (with ``per_image=True``, else ``None``).
        prediction: ``int64 (n_images,)`` predicted class (argmax of the logits) per image (with
            ``per_image=True``, else ``None``).
        confidence: ``float32 (n_images,)`` softmax probability of the predicted class per image (with
            ``per_image=True``, else ``None``).
    """

    top1: float
    executed_blocks: float
    executed_frac: float
    compute: float
    n_images: int
    correct: torch.Tensor | None = None
    executed: torch.Tensor | None = None
    prediction: torch.Tensor | None = None
    confidence: torch.Tensor | None = None

    def as_dict(self) -> dict[str, float]:
        """``images``, ``top1``, ``executed_blocks``, ``executed_frac`` and ``compute`` as plain numbers."""
        return {
            "images": self.n_images,
            "top1": self.top1,
            "executed_blocks": self.executed_blocks,
            "executed_frac": self.executed_frac,
            "compute": self.compute,
        }


@torch.inference_mode()
def score(
    model: SkippableViT | DynamicViT,
    dataset: ImageDataset,
    *,
    masks: Masks | None = None,
    n_images: int | None = None,
    batch_size: int = 512,
    dtype: torch.dtype = torch.float32,
    per_image: bool = False,
) -> Score:
    """Top-1 and spent compute of ``model`` on the first ``n_images`` images of ``dataset``.

    Args:
        model: A backbone (run with ``masks``) or a ``DynamicViT`` (run with ``return_mask=True``;
            it decides for itself, so ``masks`` must be ``None``). Put in eval mode for the call,
            every submodule's mode restored afterwards.
        dataset: The split to score.
        masks: Execute masks for a backbone (see :data:`Masks`); ``None`` runs every block (the plain
            forward). A mask function is called once per batch, in order.
        n_images: Score only the first ``n_images`` images (``None``: the whole split).
        batch_size: Images per forward.
        dtype: Input dtype (``torch.bfloat16`` with a bf16 backbone).
        per_image: Also return the per-image ``correct``, ``executed``, ``prediction`` and ``confidence``
            tensors (on the model's device).

    Raises:
        ValueError: ``masks`` with a ``DynamicViT``, or no images to score.
    """
    dynamic = not isinstance(model, SkippableViT)
    if dynamic and masks is not None:
        raise ValueError("a DynamicViT decides its own blocks: score it without masks")
    backbone: SkippableViT = model.backbone if dynamic else model  # type: ignore[union-attr,assignment]
    n = len(dataset) if n_images is None else min(int(n_images), len(dataset))
    if n <= 0:
        raise ValueError(f"no images to score: {len(dataset)} in the split, n_images={n_images}")
    device = next(backbone.parameters()).device
    depth = backbone.depth
    costs = flops_costs(backbone).to(device=device, dtype=torch.float64)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    correct, blocks, compute = 0, 0, 0.0
    hits: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    predictions: list[torch.Tensor] = []
    confidences: list[torch.Tensor] = []
    try:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            images = dataset.images[start:stop].to(device)
            x = dataset.normalize(images, dtype)
            mask = _batch_mask(masks, start, images, depth, device)
            if dynamic:
                logits, mask = model(x, return_mask=True)
            else:
                logits = backbone(x) if mask is None else backbone(x, execute_mask=mask)
            prediction = logits.argmax(1)
            hit = prediction == dataset.labels[start:stop].to(device)
            correct += int(hit.sum())
            if mask is None:
                blocks += x.shape[0] * depth
                compute += x.shape[0] * float(costs.sum())
            else:
                blocks += int(mask.sum())
                compute += float((mask.to(torch.float64) @ costs).sum())
            if per_image:
                hits.append(hit)
                rows.append(torch.ones(x.shape[0], depth, dtype=torch.bool, device=device) if mask is None else mask)
                predictions.append(prediction)
                confidences.append(logits.float().softmax(1).gather(1, prediction[:, None]).squeeze(1))
    finally:
        for m, training in modes:
            m.training = training
    return Score(
        top1=100.0 * correct / n,
        executed_blocks=blocks / n,
        executed_frac=blocks / n / depth,
        compute=compute / n,
        n_images=n,
        correct=torch.cat(hits) if per_image else None,
        executed=torch.cat(rows) if per_image else None,
        prediction=torch.cat(predictions) if per_image else None,
        confidence=torch.cat(confidences) if per_image else None,
    )


def _batch_mask(
    masks: Masks | None, start: int, images: torch.Tensor, depth: int, device: torch.device
) -> torch.Tensor | None:
    """The ``bool (B, depth)`` execute mask of the batch of ``images`` starting at ``start`` (``None``: every block)."""
    if masks is None:
        return None
    if not isinstance(masks, torch.Tensor):
        return masks(start, images)
    b = images.shape[0]
    if masks.shape == (depth,):
        return masks.to(device).expand(b, -1)
    if masks.ndim != 2 or masks.shape[1] != depth or masks.shape[0] < start + b:
        shape = tuple(masks.shape)
        raise ValueError(f"masks must be bool ({depth},) or (N, {depth}) with a row per scored image, got {shape}")
    return masks[start : start + b].to(device)


def evaluate_backbone(
    vit: SkippableViT,
    ds: ImageDataset,
    mask_fn: MaskFn | None = None,
    batch_size: int = 512,
    limit: int | None = None,
) -> dict[str, float]:
    """:func:`score` of a backbone as ``{"top1", "executed_blocks", "images"}``.

    ``mask_fn`` is ``score``'s ``masks`` and ``limit`` its ``n_images``.
    """
    s = score(vit, ds, masks=mask_fn, n_images=limit, batch_size=batch_size)
    return {"top1": s.top1, "executed_blocks": s.executed_blocks, "images": float(s.n_images)}


def random_skip_top1(vit: SkippableViT, ds: ImageDataset, skip_fraction: float, seed: int = 0, **kwargs) -> float:
    """Top-1 when every image skips ``round(skip_fraction * depth)`` blocks chosen at random (fixed seed).

    ``kwargs``: ``batch_size`` and ``limit`` (images) as in :func:`evaluate_backbone`.
    """
    g = torch.Generator(device=ds.device).manual_seed(seed)

    def mask_fn(start: int, images: torch.Tensor) -> torch.Tensor:
        return random_skip_mask(images.shape[0], vit.depth, skip_fraction, ds.device, g)

    return evaluate_backbone(vit, ds, mask_fn, **kwargs)["top1"]
