"""Dataset registry: real-dataset loaders on miniature on-disk copies (CPU, offline, no downloads)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import COLORS, WNIDS, chw_rows_to_nchw
from PIL import Image

from vitskip_env.data import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, ImageDataset, make_dataset
from vitskip_env.data import registry as data


def _check_roundtrip(ds: ImageDataset, rows: np.ndarray, labels: list[int], classes: list[str]) -> None:
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert ds.images.device.type == "cpu" and ds.images.is_contiguous()
    assert torch.equal(ds.images, chw_rows_to_nchw(rows))
    assert ds.labels.tolist() == labels
    assert ds.classes == classes
    assert ds.mean == CIFAR_MEAN and ds.std == CIFAR_STD


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_roundtrip_through_torchvision(mini_cifar100: dict, split: str) -> None:
    rows, fine, _ = mini_cifar100["splits"][split]
    ds = make_dataset("cifar-100", split, root=mini_cifar100["root"])
    assert ds.name == "cifar100" and ds.split == split
    _check_roundtrip(ds, rows, fine, mini_cifar100["classes"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_roundtrip_through_torchvision(mini_cifar10: dict, split: str) -> None:
    rows, labels = mini_cifar10["splits"][split]
    ds = make_dataset("CIFAR_10", split, root=mini_cifar10["root"])
    assert len(ds) == len(labels)
    _check_roundtrip(ds, rows, labels, mini_cifar10["classes"])


def test_cifar_corrupted_file_is_reported_as_missing(mini_cifar100: dict) -> None:
    (mini_cifar100["root"] / "cifar-100-python" / "test").write_bytes(b"truncated")
    with pytest.raises(FileNotFoundError, match="download"):
        make_dataset("cifar100", "test", root=mini_cifar100["root"])


def test_normalize_known_pixel(mini_cifar100: dict) -> None:
    ds = make_dataset("cifar100", "train", root=mini_cifar100["root"])
    pixel = ds.images[:1, :, :1, :1]
    out = ds.normalize(pixel)
    expected = [(int(pixel[0, c, 0, 0]) / 255 - CIFAR_MEAN[c]) / CIFAR_STD[c] for c in range(3)]
    assert out.dtype == torch.float32 and out.shape == (1, 3, 1, 1)
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    assert ds.normalize(white)[0, 0, 0, 0].item() == pytest.approx((1 - 0.4914) / 0.2470, abs=1e-6)


@pytest.mark.parametrize(
    ("name", "folder"),
    [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("tinyimagenet", "tiny-imagenet-200")],
)
def test_missing_dataset_names_folder_and_fix(tmp_path: Path, name: str, folder: str) -> None:
    root = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError) as info:
        make_dataset(name, "test", root=root)
    message = str(info.value)
    assert str(root / folder) in message and "download" in message and "VITSKIP_DATA" in message
    assert re.search(r"gym\.make\([^)]*download=True\)", message), message  # the env keyword, not only the flag
    assert f"make_dataset({name!r}, download=True)" in message and "--download" in message and "data_root" in message
    assert not root.exists()  # nothing was fetched or created


# ------------------------------------------------------------------------------------- Tiny-ImageNet
@pytest.fixture
def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count ``PIL.Image.open`` calls (i.e. JPEG decodes)."""
    calls = [0]
    real_open = Image.open

    def counting_open(*args: object, **kwargs: object) -> Image.Image:
        calls[0] += 1
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return calls


def test_tinyimagenet_val_labels_rgb_and_resize(mini_tiny: dict) -> None:
    ds = make_dataset("tiny-imagenet", "test", root=mini_tiny["root"])
    assert ds.images.shape == (6, 3, 64, 64) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [WNIDS.index(w) for w, _, _ in mini_tiny["val"]]
    assert ds.classes == ["crane (n03000000)", "goldfish", "crane (n02000000)"]
    assert ds.mean == IMAGENET_MEAN
    for img, (wnid, mode, _) in zip(ds.images, mini_tiny["val"], strict=True):
        expected = torch.tensor(COLORS[wnid]).view(3, 1, 1)
        if mode == "L":  # grayscale -> three equal channels
            assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
            expected = torch.full((3, 1, 1), COLORS[wnid][0])
        assert (img.int() - expected).abs().max() <= 4


def test_tinyimagenet_train_uses_wnids_file_order(mini_tiny: dict) -> None:
    ds = make_dataset("tinyimagenet", "train", root=mini_tiny["root"])
    assert ds.images.shape == (12, 3, 64, 64)
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for label, wnid in enumerate(WNIDS):
        mean_color = ds.images[ds.labels == label].float().mean(dim=(0, 2, 3))
        assert torch.allclose(mean_color, torch.tensor(COLORS[wnid], dtype=torch.float32), atol=4)


def test_tinyimagenet_decoded_cache_is_reused(mini_tiny: dict, tmp_path: Path, count_opens: list[int]) -> None:
    first = make_dataset("tinyimagenet", "test", root=mini_tiny["root"])
    assert count_opens[0] == 6
    cached = list((tmp_path / "home" / "decoded").glob("tinyimagenet-test-*.npz"))
    assert len(cached) == 1
    data.clear_cache()
    second = make_dataset("tinyimagenet", "test", root=mini_tiny["root"])
    assert count_opens[0] == 6  # no JPEG decoded the second time
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    # Touching the annotations invalidates the cache (a new stamp) and decodes again.
    annotations = mini_tiny["root"] / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    stat = annotations.stat()
    os.utime(annotations, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    data.clear_cache()
    make_dataset("tinyimagenet", "test", root=mini_tiny["root"])
    assert count_opens[0] == 12


def test_tinyimagenet_bad_annotation_line(mini_tiny: dict) -> None:
    annotations = mini_tiny["root"] / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"wnids\.txt"):
        make_dataset("tinyimagenet", "test", root=mini_tiny["root"])


# -------------------------------------------------------------------------------------------- digits
def test_digits_split_is_disjoint_complete_and_deterministic() -> None:
    train = make_dataset("digits", "train")
    test = make_dataset("digits", "test")
    assert train.images.shape == (1437, 3, 32, 32) and test.images.shape == (360, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes == [str(d) for d in range(10)] and train.num_classes == 10
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grayscale replicated
    assert int(train.images.max()) == 255
    # The 1797 digits are all distinct, so disjoint + complete means the hashes partition 1797 images.
    train_keys = {img.numpy().tobytes() for img in train.images}
    test_keys = {img.numpy().tobytes() for img in test.images}
    assert len(train_keys) + len(test_keys) == 1797 and not train_keys & test_keys
    counts = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10)
    assert counts.sum() == 1797 and (counts > 150).all()
    data.clear_cache()
    again = make_dataset("digits", "train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


def test_digits_without_sklearn_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"vitskip\[digits\]"):
        make_dataset("digits", "test")


# ---------------------------------------------------------------------------------------- registry
def test_registered_names_and_unknown_name() -> None:
    assert {"cifar10", "cifar100", "tinyimagenet", "digits"} <= set(data.available_datasets())
    with pytest.raises(ValueError, match="Did you mean 'cifar100'"):
        make_dataset("cifar1000")
    with pytest.raises(ValueError, match="split must be"):
        make_dataset("digits", "valid")  # type: ignore[arg-type]


def test_val_split_is_the_tail_of_train_for_real_datasets(mini_cifar10: dict) -> None:
    train = make_dataset("cifar10", "train", root=mini_cifar10["root"])
    val = make_dataset("cifar10", "val", root=mini_cifar10["root"])
    n = min(data.VAL_HOLDOUT, len(train) // 10)
    assert val.split == "val" and len(val) == n > 0
    assert torch.equal(val.images, train.images[-n:]) and torch.equal(val.labels, train.labels[-n:])
    with pytest.raises(ValueError, match="'train', 'val' or 'test'"):
        make_dataset("cifar10", "validation", root=mini_cifar10["root"])
