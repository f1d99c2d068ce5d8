"""One split of an image classification dataset as uint8 tensors (:class:`ImageDataset`), the
normalisation constants, and the error a failed download raises. The registry (``registry.py``)
and the loaders (``shapes.py``, ``real.py``) build on this module; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

Split = Literal["train", "val", "test"]
#: Images held out of the end of ``train`` as ``val`` for datasets without their own validation split.
VAL_HOLDOUT = 5_000

#: Per-channel normalisation constants (the same values timm uses for these datasets).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass
class ImageDataset:
    """One split of an image classification dataset, held as uint8 tensors on one device.

    Attributes:
        name: Registered dataset name (``"shapes"``, ``"cifar100"``, ...).
        split: ``"train"``, ``"val"`` or ``"test"``.
        images: ``uint8`` tensor ``(N, 3, H, W)``.
        labels: ``int64`` tensor ``(N,)`` of class indices in ``[0, len(classes))`` (any integer
            dtype is accepted and converted).
        classes: Class names, ``len(classes)`` is the number of classes.
        mean: Per-channel mean used by :meth:`normalize` (in [0, 1] units).
        std: Per-channel standard deviation used by :meth:`normalize`.
        difficulty: ``float32`` tensor ``(N,)`` in [0, 1] where the dataset knows it, else ``None``.

    Raises:
        TypeError: ``images`` or ``labels`` is not a tensor.
        ValueError: The construction breaks the contract above (wrong dtype or shape, lengths that
            differ, a label outside the classes, a difficulty of another length or outside [0, 1]);
            the message names the dataset and the fix.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    difficulty: torch.Tensor | None = None
    _scale: torch.Tensor | None = field(default=None, repr=False)
    _shift: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        """Check the documented contract once, so a bad custom loader fails here and not mid-episode."""
        where = f"dataset {self.name!r} ({self.split} split)"
        for attr in ("images", "labels"):
            if not isinstance(getattr(self, attr), torch.Tensor):
                raise TypeError(f"{where}: {attr} must be a torch.Tensor, got {type(getattr(self, attr)).__name__}")
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{where}: images must be uint8 (N, 3, H, W); got {images.dtype} {tuple(images.shape)} "
                "(convert float images with (x * 255).round().to(torch.uint8), HWC ones with .permute(0, 3, 1, 2))"
            )
        n = images.shape[0]
        if labels.shape != (n,):
            raise ValueError(f"{where}: labels must have shape ({n},) to match {n} images; got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"{where}: labels must be integer class indices (int64); got {labels.dtype}")
        if len(self.classes) < 1:
            raise ValueError(f"{where}: classes must name at least one class; got {list(self.classes)!r}")
        self.labels = labels = labels.to(torch.int64)
        if n:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= len(self.classes):
                raise ValueError(
                    f"{where}: labels must be in [0, {len(self.classes)}) for its {len(self.classes)} classes; "
                    f"got labels {lo}..{hi}: list every class in `classes` or remap the labels"
                )
        if self.difficulty is not None:
            diff = self.difficulty
            if not isinstance(diff, torch.Tensor) or diff.shape != (n,) or not diff.dtype.is_floating_point:
                got = f"{diff.dtype} {tuple(diff.shape)}" if isinstance(diff, torch.Tensor) else type(diff).__name__
                raise ValueError(f"{where}: difficulty must be a float tensor of shape ({n},) or None; got {got}")
            if n and not bool(((diff >= 0) & (diff <= 1)).all()):  # also rejects NaN
                raise ValueError(
                    f"{where}: difficulty must lie in [0, 1]; got values {float(diff.min())}..{float(diff.max())}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """Side length of the (square) images in pixels."""
        return int(self.images.shape[-1])

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.images.device

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Turn ``uint8 (B, 3, H, W)`` images into the normalised float input of the backbone.

        Computes ``(x / 255 - mean) / std`` as one fused multiply-add per pixel.
        """
        if images.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 images, got {images.dtype}; pass a slice of ds.images")
        if self._scale is None or self._scale.device != images.device or self._scale.dtype != dtype:
            std = torch.tensor(self.std, dtype=torch.float64)
            mean = torch.tensor(self.mean, dtype=torch.float64)
            self._scale = (1.0 / (255.0 * std)).to(dtype=dtype, device=images.device).view(1, 3, 1, 1)
            self._shift = (-mean / std).to(dtype=dtype, device=images.device).view(1, 3, 1, 1)
        return torch.addcmul(self._shift, images.to(dtype), self._scale)

    def to(self, device: str | torch.device) -> ImageDataset:
        """Return a copy on ``device`` (or ``self`` if it is already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        diff = None if self.difficulty is None else self.difficulty.to(device)
        return ImageDataset(
            self.name,
            self.split,
            self.images.to(device),
            self.labels.to(device),
            list(self.classes),
            self.mean,
            self.std,
            diff,
        )


class DatasetDownloadError(OSError):
    """``download=True`` could not fetch a dataset (offline, HTTP error, damaged archive).

    The message names the URL, the folder where the data was looked for and how to place it by hand.
    """


def _hwc_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 (N, H, W, 3)`` numpy -> contiguous ``uint8 (N, 3, H, W)`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
