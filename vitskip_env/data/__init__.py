"""The data wing: datasets as uint8 tensors on the device.

``dataset.py`` (``ImageDataset``, normalisation constants) and ``drawing.py`` (shape masks) <-
``procedural.py`` (the split cache of the built-in procedural datasets) <- ``shapes.py`` (one object
per image), ``relations.py`` (relations between objects), ``pointers.py`` (paths of 1-6 hops);
``real.py`` (CIFAR, Tiny-ImageNet, digits); all of them <- ``registry.py`` (``make_dataset``,
``register_dataset``); ``augment.py`` holds training-time augmentation. No module imports one above it.
"""

from __future__ import annotations

from ..files import cache_dir, default_root
from .dataset import (
    CIFAR_MEAN,
    CIFAR_STD,
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VAL_HOLDOUT,
    DatasetDownloadError,
    ImageDataset,
    Split,
)
from .registry import available_datasets, clear_cache, make_dataset, register_dataset

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "HALF",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VAL_HOLDOUT",
    "DatasetDownloadError",
    "ImageDataset",
    "Split",
    "available_datasets",
    "cache_dir",
    "clear_cache",
    "default_root",
    "make_dataset",
    "register_dataset",
]
