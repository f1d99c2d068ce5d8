"""Reading a checkpoint's data files without trusting them (used by :mod:`agents.checkpoint`).

The names must be plain file names listed in ``checkpoint.json`` with their SHA-256; both files must
be zips of uncompressed members no larger than the file (no zip bomb); tensors are read with
``torch.load(weights_only=True)`` and must be backed by their own bytes; arrays are read with
``np.load(allow_pickle=False)``. Anything else is a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .run_state import Parts

CHECKPOINT_META = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (old unsafe format, damaged, or not matching the agent)."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_stored_zip(path: Path) -> None:
    """``path`` must be a zip of uncompressed members (as ``torch.save`` and ``np.savez`` write them).

    A compressed member could expand to far more memory than the file's size (a zip bomb); stored
    members cannot, so what is read is bounded by the file.
    """
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path} is not a readable zip archive ({err}); it is damaged") from None
    packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if packed or sum(m.file_size for m in members) > path.stat().st_size:
        raise CheckpointError(
            f"checkpoint file {path} holds compressed or oversized members ({packed[:3] or 'sizes beyond the file'}); "
            "vitskip never writes those, so it is refused (it could expand to far more memory than its size)"
        )


def _check_tensor_sizes(tree: Any, path: Path) -> None:
    """Every tensor in ``tree`` must be backed by its own bytes (no zero-stride view of a huge shape on a tiny storage)."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, torch.Tensor) and item.numel() * item.element_size() > item.untyped_storage().nbytes():
            raise CheckpointError(
                f"checkpoint file {path} holds a tensor of shape {tuple(item.shape)} on a storage of "
                f"{item.untyped_storage().nbytes():,} bytes; vitskip never writes such views, so it is refused"
            )


def read_parts(directory: Path, meta: dict[str, Any]) -> Parts:
    """The checkpoint's state and arrays, after checking names, SHA-256, zip members and tensor sizes."""
    files, sha = meta.get("files"), meta.get("sha256")
    if not (isinstance(files, dict) and sorted(files) == ["arrays", "state"] and isinstance(sha, dict)):
        raise CheckpointError(f"{directory / CHECKPOINT_META} does not list its state and arrays files; it is damaged")
    for key, name in files.items():
        path = directory / name
        if not isinstance(name, str) or Path(name).name != name or not path.is_file():
            raise CheckpointError(f"checkpoint file {name!r} listed in {directory / CHECKPOINT_META} is missing")
        if sha256_of(path) != sha.get(key):
            raise CheckpointError(f"checkpoint file {path} does not match its SHA-256 in {CHECKPOINT_META}; it is damaged")
    for name in files.values():
        _check_stored_zip(directory / name)
    try:
        tensors = torch.load(directory / files["state"], map_location="cpu", weights_only=True)
        _check_tensor_sizes(tensors, directory / files["state"])
        with np.load(directory / files["arrays"], allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, ValueError, RuntimeError, OSError, MemoryError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint in {directory} holds something other than plain tensors and arrays ({first}); it is refused, "
            "since loading it could run code"
        ) from None
    return Parts(meta["state"], tensors, arrays)
