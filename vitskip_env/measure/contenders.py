"""The benchmark's contenders, static ViT vs ``DynamicViT``: accuracy, speed and memory behind ``train/benchmark.py``.

Four contenders run the same backbone on the same real test images:

- ``static``: every block (the unmodified timm forward);
- ``dynamic``: the ``DynamicViT`` (its policy's cost included: observation, network, rule, gather);
- ``random``: random skipping at the same depth: each image executes exactly as many blocks as
  the policy gave it, chosen uniformly at random (seeded; blocks the policy always runs may be
  skipped). Its masks are precomputed, so it costs no decisions; its per-block batch sizes differ
  from the policy's, so the speed gap to it only roughly measures the policy's cost;
- ``static_subset``: one fixed subset of blocks for every image (e.g. the best subset of that depth
  from the NSGA-II layer search), run as a shorter ViT.

Speed (:func:`measure_speed`) follows the measurement rules of ``docs/architecture.md``: warm-up, then rounds in which
the contenders run interleaved call by call (:func:`vitskip_env.measure.speed.compare_speed`), medians of
images/s and of per-round speed-ups. Two ideals are reported beside the achieved speed-up:

- ``ideal_speedup = depth / executed_blocks``: what skipping would give if the blocks were all
  the compute (the usual definition); ``efficiency`` is achieved / this;
- ``bound_speedup``: the same, but with the unskippable part (patch embedding + head, timed in the
  same rounds) kept: ``t_static / (t_fixed + (t_static - t_fixed) * executed_blocks / depth)``;
  ``bound_efficiency`` is achieved / this, i.e. how close the skipping machinery itself gets.

Peak working memory (:func:`peak_memory_mib`): on CUDA the allocator's peak during one forward
above what was allocated before it; on CPU the growth of the peak resident set of a fresh process
that loads the model and runs only that one configuration (:mod:`vitskip_env.measure.memprobe`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data import ImageDataset
from ..data.augment import random_block_mask
from ..deploy import DynamicViT
from .accuracy import score
from .speed import compare_speed, timing_batches

#: The contenders, in table order.
CONTENDERS: tuple[str, ...] = ("static", "dynamic", "random", "static_subset")


def random_masks_like(executed: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``bool (N, depth)``: for each row, as many executed blocks as ``executed`` has, at uniformly random blocks.

    Drawn on the CPU from a generator seeded ``seed`` (:func:`vitskip_env.data.augment.random_block_mask`),
    so the masks are the same on every device.
    """
    n, depth = executed.shape
    g = torch.Generator().manual_seed(seed)
    counts = executed.sum(1, keepdim=True).cpu()
    return random_block_mask(n, depth, counts, "cpu", g).to(executed.device)


def accuracy_table(
    dyn: DynamicViT,
    ds: ImageDataset,
    *,
    subset: torch.Tensor | None = None,
    limit: int | None = None,
    batch_size: int = 512,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, dict[str, float]]:
    """Top-1 (percent) and mean executed blocks of every contender on the first ``limit`` images of ``ds``.

    Each contender is scored by :func:`vitskip_env.measure.accuracy.score` on the same batches. The
    random contender's masks are drawn per batch, from the dynamic model's masks of that batch
    (seed ``seed + start``, ``start`` the batch's first image).

    Args:
        dyn: The dynamic model (its backbone is the static contender).
        ds: Dataset split on the model's device.
        subset: ``bool (depth,)`` kept blocks of the ``static_subset`` contender (``None``: left out).
        limit: Number of images (default: the whole split).
        batch_size: Images per forward.
        seed: Seed of the random-skip masks.
        dtype: Input dtype (``torch.bfloat16`` with a bf16 backbone).

    Returns:
        ``{contender: {"top1", "executed_blocks"}}``.
    """
    vit = dyn.backbone
    kw = {"n_images": limit, "batch_size": batch_size, "dtype": dtype}
    dynamic = score(dyn, ds, per_image=True, **kw)
    executed = dynamic.executed
    assert executed is not None
    starts = range(0, dynamic.n_images, batch_size)
    rnd = torch.cat([random_masks_like(executed[s : s + batch_size], seed + s) for s in starts])
    scores = {"static": score(vit, ds, **kw), "dynamic": dynamic, "random": score(vit, ds, masks=rnd, **kw)}
    if subset is not None:
        scores["static_subset"] = score(vit, ds, masks=subset, **kw)
    return {c: {"top1": scores[c].top1, "executed_blocks": scores[c].executed_blocks} for c in CONTENDERS if c in scores}


@torch.inference_mode()
def measure_speed(
    dyn: DynamicViT,
    ds: ImageDataset,
    batch_size: int,
    *,
    subset: torch.Tensor | None = None,
    images_per_round: int = 2048,
    max_batches: int = 8,
    rounds: int = 7,
    warmup: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> list[dict[str, Any]]:
    """Images/s of every contender at one batch size, interleaved in one process, on real images.

    Each round runs ``min(max_batches, images_per_round // batch_size)`` (at least one) distinct
    batches of consecutive test images through every contender, call by call.

    Returns:
        One row per contender: ``model, batch, images_per_s, ms_per_batch, speedup`` (median of per-round
        ratios to ``static``), ``executed_blocks`` (on the timed images), ``ideal_speedup``,
        ``efficiency``, ``bound_speedup``, ``bound_efficiency``.
    """
    vit = dyn.backbone
    batches = timing_batches(ds, batch_size, images_per_round=images_per_round, max_batches=max_batches, dtype=dtype)
    n_batches = len(batches)
    dyn_masks = [dyn(x, return_mask=True)[1] for x in batches]
    rnd_masks = [random_masks_like(m, seed + i) for i, m in enumerate(dyn_masks)]
    by_batch = {id(x): i for i, x in enumerate(batches)}
    models: dict[str, Callable[[torch.Tensor], object]] = {
        "static": vit,
        "dynamic": dyn,
        "random": lambda x: vit(x, execute_mask=rnd_masks[by_batch[id(x)]]),
        "fixed": lambda x: vit.head(vit.embed(x)),  # the unskippable part, for the bound
    }
    if subset is not None:
        models["static_subset"] = lambda x: vit(x, execute_mask=subset.expand(x.shape[0], -1))
    speed = compare_speed(models, batches, rounds=rounds, warmup=warmup, baseline="static")
    images = n_batches * batch_size
    executed = {
        "static": float(vit.depth),
        "dynamic": float(sum(int(m.sum()) for m in dyn_masks)) / images,
        "random": float(sum(int(m.sum()) for m in rnd_masks)) / images,
    }
    if subset is not None:
        executed["static_subset"] = float(subset.sum())
    t_static = speed["static"]["ms_per_batch"]
    t_fixed = min(speed["fixed"]["ms_per_batch"], t_static)
    rows = []
    for name in (c for c in CONTENDERS if c in executed):
        blocks = executed[name]
        ideal = vit.depth / blocks if blocks else float("inf")
        bound = t_static / (t_fixed + (t_static - t_fixed) * blocks / vit.depth)
        s = speed[name]
        rows.append({
            "model": name, "batch": batch_size, "images_per_s": s["images_per_s"], "ms_per_batch": s["ms_per_batch"],
            "speedup": s["speedup"], "executed_blocks": blocks, "ideal_speedup": ideal,
            "efficiency": s["speedup"] / ideal, "bound_speedup": bound, "bound_efficiency": s["speedup"] / bound,
            "fixed_share": t_fixed / t_static,
        })  # fmt: skip
    return rows


def peak_memory_mib(
    model_file: str | os.PathLike,
    contender: str,
    batch_size: int,
    *,
    dataset: str,
    split: str = "test",
    data_root: str | os.PathLike | None = None,
    subset: Sequence[bool] | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: int | None = None,
    seed: int = 0,
) -> float:
    """Peak working memory (MiB) of one forward of ``contender`` at ``batch_size``, in a fresh process.

    CPU: the child's peak resident set after the forward minus before it (the model, the data and the
    input batch are loaded first). CUDA: the allocator's peak above what was allocated before it.

    Raises:
        FileNotFoundError: No such model file (checked before the child starts).
        RuntimeError: The child process failed (its error output is included).
    """
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"memory probe: no such model file {str(model_file)!r}")
    cmd = [sys.executable, "-m", "vitskip_env.measure.memprobe", str(model_file), contender, str(batch_size),
           "--dataset", dataset, "--split", split, "--device", device, "--dtype", dtype, "--seed", str(seed)]  # fmt: skip
    if data_root is not None:
        cmd += ["--data-root", str(data_root)]
    if subset is not None:
        cmd += ["--subset", "".join("1" if b else "0" for b in subset)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # see vitskip_env.measure.memprobe
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {' '.join(cmd[2:])} failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"])
