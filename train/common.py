"""Helpers shared by the training scripts (written once here, not pasted into each script)."""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Make `python train/xyz.py` work from a source checkout without installing the package.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Raises:
        ValueError: ``cuda`` was asked for but no GPU is visible.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for a GPU but torch sees none; use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (default: all cores; two beat one even at batch 1 here)."""
    if threads:
        torch.set_num_threads(threads)


def run_name(env_id: str, algo: str, seed: int) -> str:
    """CleanRL-style run name ``env__algo__seed__timestamp``."""
    return f"{env_id}__{algo}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def distributed_info() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (``(0, 0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def newest_run(runs_dir: str | Path, env_id: str | None = None) -> Path | None:
    """The most recently written run folder under ``runs_dir`` (of ``env_id``, if given) holding a
    ``dynamic_vit.safetensors``; None when there is none."""
    pattern = f"{env_id}__*/dynamic_vit.safetensors" if env_id else "*/dynamic_vit.safetensors"
    files = sorted(Path(runs_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
    return files[-1].parent if files else None
