"""Early-exit contenders on one plane: top-1, mean exit depth, LGViT's proxy, FLOPs and measured speed.

For an :class:`~vitskip_env.deploy.EarlyExitViT` (its backbone is the static contender), every
threshold rule is scored on the test split from all exit points' logits (one pass, :func:`simulate`:
the same decisions the batched model takes) and then timed as a real batched model whose exited
rows leave the batch, interleaved call by call with the static backbone and any other model
(e.g. a skip-only ``DynamicViT``) in one process (:func:`vitskip_env.measure.speed.compare_speed`).

Three cost views per contender, side by side:

* ``lgvit_proxy = depth / mean blocks run`` (LGViT's reported "speed-up": a layer count, heads free);
* ``flops_ratio``: static FLOPs / the contender's mean FLOPs per image, counting the patch
  embedding, the blocks run, every exit head evaluated on the way and the final classifier;
* ``speedup``: measured wall-clock, median of per-round ratios to the static backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..data import ImageDataset
from ..deploy import EarlyExitViT, ExitRule, SkipExitViT, point_costs, simulate
from ..model import SkippableViT
from .speed import compare_speed, timing_batches


@dataclass
class ExitCosts:
    """FLOPs per image of the pieces of an exit model (one image, counted with torch's FLOP counter)."""

    embed: float
    blocks: list[float]
    heads: list[float]
    final: float

    @classmethod
    def of(cls, model: EarlyExitViT) -> ExitCosts:
        """Count the pieces of ``model`` (the final classifier = norm + head)."""
        from torch.utils.flop_counter import FlopCounterMode

        vit = model.backbone
        p = next(vit.parameters())
        x = torch.zeros(1, 3, vit.img_size, vit.img_size, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                tokens = vit.embed(x)
            embed = counter.get_total_flops()
            counter = FlopCounterMode(display=False)
            with counter:
                vit.head(tokens)
            final = counter.get_total_flops()
        return cls(
            float(embed), [float(f) for f in vit.block_flops()], [float(f) for f in model.exits.head_flops(vit)], float(final)
        )

    @property
    def static(self) -> float:
        """FLOPs of the unmodified backbone."""
        return self.embed + sum(self.blocks) + self.final

    def per_point(self, positions: tuple[int, ...]) -> torch.Tensor:
        """FLOPs of an image that leaves at each exit point (the final classifier last), embedding included."""
        return self.embed + point_costs(self.blocks, positions, self.heads, self.final)


@torch.no_grad()
def all_exit_logits(model: EarlyExitViT, ds: ImageDataset, limit: int | None = None, batch_size: int = 500) -> torch.Tensor:
    """``(P, N, C)`` logits of every exit point on the first ``limit`` images of ``ds`` (every block run)."""
    n = len(ds) if limit is None else min(limit, len(ds))
    dtype = next(model.backbone.parameters()).dtype
    chunks = [model.exit_logits(ds.normalize(ds.images[i : min(i + batch_size, n)], dtype)) for i in range(0, n, batch_size)]
    return torch.cat(chunks, 1)


def rule_row(
    model: EarlyExitViT, rule: ExitRule, logits: torch.Tensor, labels: torch.Tensor, costs: ExitCosts
) -> dict[str, Any]:
    """Top-1, mean blocks run, LGViT's proxy and FLOPs ratio of ``rule`` on precomputed logits."""
    point, pred = simulate(rule, logits)
    point = point.cpu()
    depth = model.backbone.depth
    blocks = torch.tensor([p + 1 for p in model.exits.positions] + [depth], dtype=torch.float64)[point].mean().item()
    flops = costs.per_point(model.exits.positions)[point].mean().item()
    return {
        "top1": 100.0 * (pred.cpu() == labels.cpu()).double().mean().item(),
        "mean_blocks": blocks,
        "lgvit_proxy": depth / blocks,
        "flops_ratio": costs.static / flops,
    }


@torch.no_grad()
def skip_exit_row(
    model: SkipExitViT, ds: ImageDataset, costs: ExitCosts, limit: int | None = None, batch_size: int = 500
) -> dict[str, Any]:
    """Top-1, mean blocks run, LGViT's proxy and FLOPs ratio of an RL skip-and-exit model on ``ds``.

    FLOPs count the embedding, the blocks each image ran, every exit head it passed and the final
    classifier where it got there (the policy's small MLP is left out, as the rules' arithmetic is).
    """
    n = len(ds) if limit is None else min(limit, len(ds))
    dtype = next(model.backbone.parameters()).dtype
    hits, blocks, flops = 0, 0.0, 0.0
    block_flops = torch.tensor(costs.blocks, dtype=torch.float64)
    positions = torch.tensor(model.exits.positions)
    head_flops = torch.tensor(costs.heads, dtype=torch.float64)
    depth = model.depth
    for i in range(0, n, batch_size):
        images = ds.images[i : min(i + batch_size, n)]
        logits, mask, left = model(ds.normalize(images, dtype), return_mask=True, return_exits=True)
        hits += int((logits.argmax(1).cpu() == ds.labels[i : i + images.shape[0]].cpu()).sum())
        mask, left = mask.cpu(), left.cpu()
        blocks += float(mask.sum())
        passed = (left[:, None] >= positions[None, :] + 1).double()  # the heads each image ran
        per_image = costs.embed + mask.double() @ block_flops + passed @ head_flops + (left == depth).double() * costs.final
        flops += float(per_image.sum())
    mean_blocks = blocks / n
    return {
        "top1": 100.0 * hits / n,
        "mean_blocks": mean_blocks,
        "lgvit_proxy": depth / mean_blocks if mean_blocks else float("inf"),  # a model that runs no block at all
        "flops_ratio": costs.static / (flops / n),
    }


def measure_exit_speed(
    contenders: Mapping[str, Callable[[torch.Tensor], object]],
    static: SkippableViT,
    ds: ImageDataset,
    batch_size: int,
    *,
    images_per_round: int = 2048,
    max_batches: int = 8,
    rounds: int = 7,
    warmup: int = 1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, dict[str, float]]:
    """Images/s and speed-up against ``static`` of every contender at one batch size, interleaved, on real images."""
    batches = timing_batches(ds, batch_size, images_per_round=images_per_round, max_batches=max_batches, dtype=dtype)
    return compare_speed({"static": static, **contenders}, batches, rounds=rounds, warmup=warmup, baseline="static")


__all__ = ["ExitCosts", "all_exit_logits", "measure_exit_speed", "rule_row", "skip_exit_row"]
