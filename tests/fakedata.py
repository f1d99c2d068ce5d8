"""Miniature on-disk copies of the real datasets, in the exact formats their loaders read.

Used by the dataset tests and by the environment checkers for the CIFAR-10 / CIFAR-100 /
Tiny-ImageNet ids (no download, a few kilobytes each). The CIFAR writers also point
torchvision's md5 lists at the fake files (through ``monkeypatch``, undone after the test).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv_datasets


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj))
    return _md5(path)


def random_batch(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` CIFAR images as torchvision stores them: ``uint8 (n, 3072)``, each row CHW row-major."""
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def chw_rows_to_nchw(rows: np.ndarray) -> torch.Tensor:
    """Inverse of the CIFAR row layout: ``(n, 3072)`` -> ``(n, 3, 32, 32)``."""
    return torch.from_numpy(rows.reshape(-1, 3, 32, 32))


def write_mini_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A 5+3 image CIFAR-100 in torchvision's format under ``root``; the expected md5s are those of these files."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = ["apple", "bee", "cloud", "dolphin"]
    splits = {}
    for name, n in (("train", 5), ("test", 3)):
        rows = random_batch(rng, n)
        fine = rng.integers(0, len(fine_names), size=n).tolist()
        md5 = _dump(
            folder / name,
            {
                "data": rows,
                "fine_labels": fine,
                "coarse_labels": [0] * n,
                "filenames": [f"{name}_{i}.png" for i in range(n)],
            },
        )
        splits[name] = (rows, fine, md5)
    meta_md5 = _dump(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": ["all"]})
    cls = tv_datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", splits["train"][2]]])
    monkeypatch.setattr(cls, "test_list", [["test", splits["test"][2]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    return {"root": root, "splits": splits, "classes": fine_names}


def write_mini_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A CIFAR-10 with five 2-image train batches and a 3-image test batch, in torchvision's format."""
    rng = np.random.default_rng(2)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"class{i}" for i in range(10)]
    train_list, train_rows, train_labels = [], [], []
    for b in range(1, 6):
        rows, labels = random_batch(rng, 2), rng.integers(0, 10, size=2).tolist()
        train_list.append([f"data_batch_{b}", _dump(folder / f"data_batch_{b}", {"data": rows, "labels": labels})])
        train_rows.append(rows)
        train_labels += labels
    test_rows, test_labels = random_batch(rng, 3), rng.integers(0, 10, size=3).tolist()
    test_md5 = _dump(folder / "test_batch", {"data": test_rows, "labels": test_labels})
    meta_md5 = _dump(folder / "batches.meta", {"label_names": names})
    cls = tv_datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", [["test_batch", test_md5]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    splits = {"train": (np.concatenate(train_rows), train_labels), "test": (test_rows, test_labels)}
    return {"root": root, "splits": splits, "classes": names}


WNIDS = ["n03000000", "n01000000", "n02000000"]  # deliberately unsorted: the file order is the class order
COLORS = {"n03000000": (200, 30, 30), "n01000000": (30, 200, 30), "n02000000": (30, 30, 200)}


def solid(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 64), mode: str = "RGB") -> None:
    """Write a one-colour JPEG (``mode="L"`` for grayscale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    value = color[0] if mode == "L" else color
    Image.new(mode, size, value).save(path, "JPEG", quality=95)


def write_mini_tiny(root: Path) -> dict:
    """Tiny-ImageNet: 3 classes x 4 train images and 6 val images; one val image is grayscale, one is 80x48."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (base / "words.txt").write_text("n01000000\tgoldfish, Carassius auratus\nn02000000\tcrane\nn03000000\tcrane\n")
    for wnid in WNIDS:
        for i in range(4):
            solid(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLORS[wnid])
    val = [("n02000000", "RGB", (64, 64)), ("n01000000", "L", (64, 64)), ("n03000000", "RGB", (80, 48))]
    val += [("n01000000", "RGB", (64, 64)), ("n03000000", "RGB", (64, 64)), ("n02000000", "RGB", (64, 64))]
    lines = []
    for i, (wnid, mode, size) in enumerate(val):
        solid(base / "val" / "images" / f"val_{i}.JPEG", COLORS[wnid], size, mode)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {"root": root, "val": val}


DAMAGES = ("truncated", "emptied", "flipped")


def damage(path: Path, how: str) -> None:
    """Damage a file the ways disks and interrupted writes do: ``truncated`` to half its size,
    ``emptied`` to zero bytes, or 16 bytes in its middle ``flipped`` (every bit inverted)."""
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "emptied":
        raw = bytearray()
    elif how == "flipped":
        mid = len(raw) // 2
        raw[mid : mid + 16] = bytes(b ^ 0xFF for b in raw[mid : mid + 16])
    else:
        raise ValueError(f"how must be one of {DAMAGES}, got {how!r}")
    path.write_bytes(bytes(raw))
