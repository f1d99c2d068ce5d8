"""Per-block cost model: each block's share of the full forward, summing to 1 over the blocks.

``"flops"`` (default) uses :meth:`SkippableViT.block_flops` (counted once by torch's FLOP counter):
deterministic and machine-independent. ``"latency"`` measures each block's wall-clock time on the
backbone's own device (warm-up, several interleaved rounds, median), which also captures memory-bound
work that FLOPs miss, at the price of being machine-dependent and slightly noisy.
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import torch

from ..runtime import sync
from .backbone import SkippableViT

CostModel = Literal["flops", "latency"]
COST_MODELS: tuple[str, ...] = ("flops", "latency")


def flops_costs(backbone: SkippableViT) -> torch.Tensor:
    """FLOPs share of every block, ``float64 (depth,)`` summing to 1."""
    flops = torch.tensor(backbone.block_flops(), dtype=torch.float64)
    return flops / flops.sum()


@torch.inference_mode()
def block_latencies(backbone: SkippableViT, batch_size: int = 64, rounds: int = 7, warmup: int = 2) -> list[float]:
    """Median seconds per call of every block on a ``batch_size`` batch, on the backbone's device.

    The blocks are timed round-robin (block 0, 1, ..., L-1, then again), so slow drift of the host
    affects every block alike, and the median over ``rounds`` discards outliers.
    """
    p = next(backbone.parameters())
    was_training = backbone.training
    backbone.eval()
    x = torch.randn(batch_size, 3, backbone.img_size, backbone.img_size, device=p.device, dtype=p.dtype)
    tokens = backbone.embed(x)
    times: list[list[float]] = [[] for _ in range(backbone.depth)]
    for r in range(warmup + rounds):
        for i, block in enumerate(backbone.blocks):
            sync(p.device)
            t0 = time.perf_counter()
            block(tokens)
            sync(p.device)
            if r >= warmup:
                times[i].append(time.perf_counter() - t0)
    backbone.train(was_training)
    return [statistics.median(t) for t in times]


def latency_costs(backbone: SkippableViT, batch_size: int = 64, rounds: int = 7) -> torch.Tensor:
    """Measured latency share of every block, ``float64 (depth,)`` summing to 1."""
    lat = torch.tensor(block_latencies(backbone, batch_size, rounds), dtype=torch.float64)
    return lat / lat.sum()


def block_costs(backbone: SkippableViT, cost_model: CostModel = "flops") -> torch.Tensor:
    """Each block's cost share, ``float32 (depth,)`` on the backbone's device, summing to 1.

    Raises:
        ValueError: Unknown ``cost_model``.
    """
    if cost_model == "flops":
        costs = flops_costs(backbone)
    elif cost_model == "latency":
        costs = latency_costs(backbone)
    else:
        raise ValueError(f"cost_model must be one of {list(COST_MODELS)}, got {cost_model!r}")
    return costs.to(device=next(backbone.parameters()).device, dtype=torch.float32)
