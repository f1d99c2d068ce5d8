"""Dataset registry: every dataset is loaded once per process into uint8 tensors on the device.

``make_dataset(name, split, root, download, device)`` returns an :class:`ImageDataset` whose
``images`` are ``uint8 (N, 3, H, W)`` and ``labels`` ``int64 (N,)``, both on ``device``. The
backbone never sees uint8: :meth:`ImageDataset.normalize` turns a slice into the float input the
backbone expects, on the fly, so a whole split costs one byte per pixel on the device.

Registered names: ``shapes``, ``relations`` and ``pointers`` (built in, offline), ``digits`` (scikit-learn's bundled digits,
optional), ``cifar10``, ``cifar100`` (torchvision's loaders) and ``tinyimagenet`` (the standard
``tiny-imagenet-200/`` folder).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..files import default_root
from . import pointers, real, relations, shapes
from .dataset import VAL_HOLDOUT, ImageDataset, Split

Loader = Callable[[str, Path, bool], ImageDataset]
_LOADERS: dict[str, Loader] = {
    "shapes": shapes.load_shapes,
    "relations": relations.GENERATOR.load,
    "pointers": pointers.GENERATOR.load,
    "cifar10": real.load_cifar10,
    "cifar100": real.load_cifar100,
    "tinyimagenet": real.load_tinyimagenet,
    "digits": real.load_digits,
}
_CACHE: dict[tuple, ImageDataset] = {}
#: Built-in datasets that render their own ``val`` split and ignore ``root``.
_PROCEDURAL = frozenset({"shapes", "relations", "pointers"})


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(split, root, download) -> ImageDataset`` (CPU tensors) under ``name``."""

    def deco(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return deco


def available_datasets() -> list[str]:
    """Names accepted by :func:`make_dataset` (``digits`` only when scikit-learn is installed)."""
    names = sorted(_LOADERS)
    if "digits" in names and not _sklearn_available():
        names.remove("digits")
    return names


def _sklearn_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


def make_dataset(
    name: str,
    split: Split = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    device: str | torch.device = "cpu",
) -> ImageDataset:
    """Load a dataset split once per process as uint8 tensors on ``device``.

    Args:
        name: One of :func:`available_datasets` (case-insensitive; ``"cifar-100"`` also works).
        split: ``"train"``, ``"val"`` or ``"test"``. ``val`` is for model selection (NSGA-II fitness,
            early stopping) so that ``test`` stays untouched: the built-in datasets render their own 5k
            images from a disjoint seed; the other datasets hold out the last :data:`VAL_HOLDOUT` (at most a tenth) images of
            ``train`` (a backbone trained on the full train split has seen them, so their ``val``
            accuracy is optimistic). Tiny-ImageNet's labelled ``val`` folder is its ``"test"``.
        root: Folder holding real datasets; default ``$VITSKIP_DATA`` or the user cache folder.
        download: Fetch a missing real dataset with torchvision's downloader. Never implied.
        device: Where the tensors live; all later indexing and normalisation happens there.

    Raises:
        ValueError: Unknown name or split (the message lists the valid ones).
        FileNotFoundError: A real dataset is missing (the message names the folder and the fix).
        DatasetDownloadError: ``download=True`` failed (the message says where to put the files by hand).
    """
    key_name = name.lower().replace("-", "").replace("_", "")
    if key_name not in _LOADERS:
        hint = difflib.get_close_matches(key_name, list(_LOADERS), n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"Unknown dataset {name!r}; available: {sorted(_LOADERS)}.{extra}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    root_path = Path(root).expanduser() if root is not None else default_root()
    device = torch.device(device)
    key = (key_name, split, str(root_path.resolve()) if key_name not in _PROCEDURAL else "", str(device))
    if key not in _CACHE:
        cpu_key = (*key[:3], "cpu")
        ds = _CACHE.get(cpu_key) or _load(key_name, split, root_path, download)
        _CACHE[cpu_key] = ds
        _CACHE[key] = ds.to(device)
    return _CACHE[key]


def _load(name: str, split: str, root: Path, download: bool) -> ImageDataset:
    if split != "val" or name in _PROCEDURAL:
        return _LOADERS[name](split, root, download)
    train = make_dataset(name, "train", root, download)
    tail = slice(len(train) - min(VAL_HOLDOUT, len(train) // 10), None)
    diff = None if train.difficulty is None else train.difficulty[tail]
    return ImageDataset(
        train.name, "val", train.images[tail], train.labels[tail], list(train.classes), train.mean, train.std, diff
    )


def clear_cache() -> None:
    """Forget every dataset loaded in this process (frees their memory)."""
    _CACHE.clear()
