"""Memory needed by ``num_envs`` episodes in flight, checked before anything big is allocated.

A vector env of ``N`` episodes holds, on its device, the token state ``(N, T, D)`` and, while a
block runs, that block's working memory (the gathered rows, ``q``/``k``/``v``, the attention scores
``(N, heads, T, T)`` and the MLP hidden layer); on the host it holds the batched observation
space's bounds and each step's observations. :func:`check_memory` adds these up and refuses a
``num_envs`` that cannot fit, with the estimate and what is available, instead of a bare
``MemoryError`` minutes later.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..model import SkippableViT

GIB = 2.0**30


def _cgroup_room() -> int | None:
    """Bytes the cgroup (v2) of this process may still allocate, or ``None`` without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_host_memory() -> int | None:
    """Host memory available to this process in bytes (``MemAvailable``, capped by a cgroup limit); ``None`` if unknown."""
    found: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        found = None
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    room = _cgroup_room()
    return found if room is None else min(found, room)


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (host memory for the CPU, the CUDA allocator's view for a GPU); ``None`` if unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    return available_host_memory()


def _block_sizes(backbone: SkippableViT) -> tuple[int, int]:
    """``(attention heads, MLP hidden width)`` of the first block (timm layout; defaults 1 and 4 D)."""
    d = backbone.embed_dim
    try:
        block = backbone.blocks[0]
    except (AttributeError, IndexError, TypeError):
        return 1, 4 * d
    heads = int(getattr(getattr(block, "attn", None), "num_heads", 1) or 1)
    fc1 = getattr(getattr(block, "mlp", None), "fc1", None)
    hidden = int(getattr(fc1, "out_features", 4 * d) or 4 * d)
    return heads, hidden


def bytes_per_env(backbone: SkippableViT, obs_dim: int) -> tuple[int, int]:
    """``(device bytes, host bytes)`` one episode in flight needs (an estimate, on the high side).

    Device: the token state and one block's working memory (gathered rows, ``q``/``k``/``v`` and
    the attention output, residuals, two MLP hidden layers, scores and their softmax), plus the
    image and its normalised copy when episodes start. Host: the batched observation space's
    ``low``/``high`` bounds and a few copies of each step's observations and infos.
    """
    t, d = backbone.num_tokens, backbone.embed_dim
    heads, hidden = _block_sizes(backbone)
    param = next(backbone.parameters(), None)
    item = param.element_size() if param is not None and param.is_floating_point() else 4
    side = backbone.img_size
    device = item * (t * (10 * d + 2 * hidden) + 2 * heads * t * t) + 5 * 3 * side * side + 8 * obs_dim + 64
    host = 4 * 6 * obs_dim + 512
    return device, host


def check_memory(backbone: SkippableViT, obs_dim: int, num_envs: int, device: torch.device) -> None:
    """Refuse ``num_envs`` episodes that cannot fit in the memory available now.

    Raises:
        ValueError: The estimate exceeds the free memory of ``device`` (or of the host); the
            message gives both and the largest ``num_envs`` that fits.
    """
    dev_each, host_each = bytes_per_env(backbone, obs_dim)
    if device.type == "cuda":
        needs = [(dev_each, device, available_memory(device)), (host_each, torch.device("cpu"), available_host_memory())]
    else:
        needs = [(dev_each + host_each, device, available_host_memory())]
    for each, where, free in needs:
        if free is None or each * num_envs <= free:
            continue
        shape = f"{backbone.num_tokens} x {backbone.embed_dim}"
        raise ValueError(
            f"num_envs={num_envs} needs about {each * num_envs / GIB:.1f} GiB on {where} ({each / 1024:.0f} KiB per env: "
            f"the {shape} token state, a block's working memory and the observations) but only {free / GIB:.1f} GiB "
            f"is available; use num_envs <= {max(1, free // each)}, a smaller backbone, or another device"
        )
