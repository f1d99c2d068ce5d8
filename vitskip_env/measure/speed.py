"""Side-by-side wall-clock speed of models on real images (static vs dynamic, in one process).

Rules (docs/architecture.md, "Principles": honest measurement): every model sees the same real image batches
(decisions depend on content), warm-up first, then rounds in which the models run interleaved
call by call (the order rotates every round), so host drift hits them alike; speeds are medians
over rounds and ratios are medians of per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

from ..data import ImageDataset
from ..runtime import sync

Model = Callable[[torch.Tensor], object]


def timing_batches(
    ds: ImageDataset,
    batch_size: int,
    *,
    images_per_round: int = 2048,
    max_batches: int = 8,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """The real test batches one timing round runs: ``min(max_batches, images_per_round // batch_size)`` (at least
    one, at most what the split holds) consecutive batches of ``batch_size`` images, normalised.

    Raises:
        ValueError: ``batch_size`` is larger than the split.
    """
    if batch_size > len(ds):
        raise ValueError(f"batch size {batch_size} is larger than the split ({len(ds)} images); use smaller batches")
    n = max(1, min(max_batches, images_per_round // batch_size, len(ds) // batch_size))
    return [ds.normalize(ds.images[i * batch_size : (i + 1) * batch_size], dtype) for i in range(n)]


@torch.inference_mode()
def compare_speed(
    models: Mapping[str, Model],
    batches: list[torch.Tensor],
    *,
    rounds: int = 7,
    warmup: int = 1,
    baseline: str | None = None,
) -> dict[str, dict[str, float]]:
    """Images per second of each model over the same batches, interleaved, with medians.

    Args:
        models: ``name -> fn(images)``; each call runs one batch (e.g. a ``SkippableViT`` or ``DynamicViT``).
        batches: Normalised image batches, already on the device (one round runs all of them).
        rounds: Timed rounds; the median is reported.
        warmup: Untimed rounds first.
        baseline: Name of the model the ``speedup`` ratios are taken against (default: the first).

    Returns:
        ``{name: {"images_per_s", "ms_per_batch", "speedup"}}`` (medians; ``speedup`` is the median
        of per-round ratios against ``baseline``).
    """
    if not models or not batches:
        raise ValueError("compare_speed needs at least one model and one batch")
    names = list(models)
    baseline = baseline or names[0]
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not one of {names}")
    device = batches[0].device
    n_images = sum(b.shape[0] for b in batches)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        round_times = dict.fromkeys(names, 0.0)
        for batch in batches:
            for name in order:  # interleaved call by call
                sync(device)
                t0 = time.perf_counter()
                models[name](batch)
                sync(device)
                round_times[name] += time.perf_counter() - t0
        if r >= warmup:
            for name in names:
                times[name].append(round_times[name])
    out: dict[str, dict[str, float]] = {}
    for name in names:
        med = statistics.median(times[name])
        ratios = [b / t for b, t in zip(times[baseline], times[name], strict=True)]
        out[name] = {
            "images_per_s": n_images / med,
            "ms_per_batch": 1000 * med / len(batches),
            "speedup": statistics.median(ratios),
        }
    return out
