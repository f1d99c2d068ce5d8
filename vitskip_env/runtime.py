"""Torch runtime helpers shared by every wing: the one device resolver, the one device sync and the
key that identifies a module's current weights."""

from __future__ import annotations

import torch
from torch import nn


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Raises:
        ValueError: A GPU was asked for but torch sees none.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} asks for a GPU but torch sees none; use device='cpu' or 'auto'")
    return dev


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU); call it before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weights_key(module: nn.Module) -> tuple:
    """What identifies a module's current weights: each parameter's and buffer's identity, storage and
    in-place version counter (an optimiser step, ``load_state_dict`` or a replaced tensor changes it).

    Writes through ``.data`` bypass the counter and are not seen. Inference tensors have no counter:
    they count by identity and storage only.
    """
    return tuple((id(t), t.data_ptr(), None if t.is_inference() else t._version)
                 for t in (*module.parameters(), *module.buffers()))  # fmt: skip
