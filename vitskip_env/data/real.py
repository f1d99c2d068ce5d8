"""Loaders for the real datasets: ``cifar10``, ``cifar100``, ``tinyimagenet`` and ``digits``.

Plain loader functions; :mod:`vitskip_env.data.registry` lists them, so they are registered whenever the
registry is imported. Every loader follows the registry contract
``loader(split, root, download) -> ImageDataset`` with CPU tensors, and never touches the network
unless ``download=True``.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..files import cache_dir
from ._npz import CacheError, read_npz, write_npz
from .dataset import (
    CIFAR_MEAN,
    CIFAR_STD,
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetDownloadError,
    ImageDataset,
    _hwc_to_tensor,
)

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_FOLDER = "tiny-imagenet-200"
TINY_SIZE = 64
DIGITS_SIZE = 32
DIGITS_TRAIN_FRACTION = 0.8

_FETCH_HINT = (
    "To fetch it, pass download=True to the environment (gym.make(env_id, download=True)) or to "
    "make_dataset({name!r}, download=True), or --download to the training scripts; if it is already on disk "
    "elsewhere, set $VITSKIP_DATA or pass data_root (--data-root) to the folder that contains {folder}/."
)


def _download_failed(name: str, url: str, root: Path, folder: str, err: BaseException) -> DatasetDownloadError:
    """The one-line error for a failed ``download=True``: what failed, where we looked, how to place it by hand."""
    return DatasetDownloadError(
        f"Downloading {name} from {url} failed ({type(err).__name__}: {err}). The data was looked for in "
        f"{root / folder}. Check the network and retry, or fetch {url} on another machine and extract it into "
        f"{root} so that {root / folder}/ exists (or point $VITSKIP_DATA / data_root at a folder holding {folder}/), "
        "then load it without download=True."
    )


# --------------------------------------------------------------------------------------------- CIFAR
def _load_cifar(name: str, class_name: str, folder: str, split: str, root: Path, download: bool) -> ImageDataset:
    """Load one CIFAR split through torchvision's own reader (which verifies the files' md5)."""
    from torchvision import datasets as tv_datasets

    cls = getattr(tv_datasets, class_name)
    try:
        tv = cls(root, train=split == "train", download=download)
    except RuntimeError as err:
        if "not found or corrupted" not in str(err):
            raise
        if download:  # torchvision downloaded (or found) the archive, but it or its extraction is bad
            raise FileNotFoundError(
                f"{name} ({split} split) is still missing or corrupted after download=True: looked for {root / folder}. "
                f"The archive {root / cls.filename} may be damaged (an interrupted download): delete it and "
                f"{root / folder}/, then retry."
            ) from err
        raise FileNotFoundError(
            f"{name} ({split} split) not found or corrupted: looked for {root / folder} "
            f"(root {root}, expected subfolder {folder}/ with torchvision's pickled batches). "
            + _FETCH_HINT.format(name=name, folder=folder)
        ) from err
    except OSError as err:  # urllib's URLError and HTTPError are OSErrors; so are socket and TLS errors
        if not download:
            raise
        raise _download_failed(name, cls.url, root, folder, err) from err
    images = _hwc_to_tensor(np.asarray(tv.data, dtype=np.uint8))
    labels = torch.as_tensor(np.asarray(tv.targets, dtype=np.int64))
    return ImageDataset(name, split, images, labels, [str(c) for c in tv.classes], CIFAR_MEAN, CIFAR_STD)


def load_cifar10(split: str, root: Path, download: bool) -> ImageDataset:
    return _load_cifar("cifar10", "CIFAR10", "cifar-10-batches-py", split, root, download)


def load_cifar100(split: str, root: Path, download: bool) -> ImageDataset:
    return _load_cifar("cifar100", "CIFAR100", "cifar-100-python", split, root, download)


# ------------------------------------------------------------------------------------- Tiny-ImageNet
def load_tinyimagenet(split: str, root: Path, download: bool) -> ImageDataset:
    """Tiny-ImageNet from ``root/tiny-imagenet-200/``; ``"test"`` is its labelled ``val`` split.

    Decoded images are cached in ``cache_dir()/decoded/`` because decoding 100k JPEGs takes minutes.
    """
    base = root / TINY_FOLDER
    if download and not (base / "wnids.txt").is_file():
        _download_tinyimagenet(root)
    if not (base / "wnids.txt").is_file():
        raise FileNotFoundError(
            f"tinyimagenet not found: expected {base} with wnids.txt, train/ and val/ (root {root}). "
            + _FETCH_HINT.format(name="tinyimagenet", folder=TINY_FOLDER)
            + f" The download fetches {TINY_URL} (about 240 MB)."
        )
    wnids = _read_wnids(base)
    files, labels, stamp_file = _tiny_listing(base, split, wnids)
    stamp = f"{base.resolve()}|{split}|{len(files)}|{stamp_file.stat().st_mtime_ns}"
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    cache = cache_dir() / "decoded" / f"tinyimagenet-{split}-{digest}.npz"
    images = _read_decoded(cache, labels)
    if images is None:
        fix = f"re-extract {TINY_FOLDER}.zip into {root}, or delete {base} and load it again with download=True"
        images = _decode_images(files, TINY_SIZE, fix)
        write_npz(cache, {"images": images, "labels": labels})
    return ImageDataset(
        "tinyimagenet",
        split,
        _hwc_to_tensor(images),
        torch.from_numpy(labels),
        _tiny_class_names(base, wnids),
        IMAGENET_MEAN,
        IMAGENET_STD,
    )


def _download_tinyimagenet(root: Path) -> None:
    """Fetch and extract the Tiny-ImageNet zip into ``root`` with torchvision's downloader."""
    from torchvision.datasets.utils import download_and_extract_archive

    archive = root / TINY_URL.rsplit("/", 1)[-1]
    try:
        download_and_extract_archive(TINY_URL, download_root=str(root))
    except zipfile.BadZipFile as err:  # torchvision reuses any file already at `archive`, even a partial one
        raise DatasetDownloadError(
            f"The Tiny-ImageNet archive {archive} is damaged ({err}), probably an interrupted download: "
            "delete it and retry with download=True, or extract a good copy of it into "
            f"{root} so that {root / TINY_FOLDER}/ exists."
        ) from err
    except OSError as err:  # urllib's URLError and HTTPError are OSErrors; so are socket and TLS errors
        raise _download_failed("tinyimagenet", TINY_URL, root, TINY_FOLDER, err) from err


def _read_wnids(base: Path) -> list[str]:
    """Class ids in the order ``wnids.txt`` lists them (that order defines the label indices)."""
    wnids = [line.strip() for line in (base / "wnids.txt").read_text().splitlines() if line.strip()]
    if len(set(wnids)) != len(wnids) or not wnids:
        raise ValueError(f"{base / 'wnids.txt'} must list distinct class ids, one per line; got {len(wnids)} lines")
    return wnids


def _tiny_listing(base: Path, split: str, wnids: list[str]) -> tuple[list[Path], np.ndarray, Path]:
    """Image files and labels of one split, plus the file whose mtime stamps the decoded cache."""
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        train = base / "train"
        if not train.is_dir():
            raise FileNotFoundError(f"tinyimagenet train split missing: {train} does not exist; re-extract {TINY_FOLDER}.zip")
        for wnid in wnids:
            found = sorted(p for p in (train / wnid / "images").glob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
            files += found
            labels += [index[wnid]] * len(found)
        stamp_file = base / "wnids.txt"
    else:
        stamp_file = base / "val" / "val_annotations.txt"
        if not stamp_file.is_file():
            raise FileNotFoundError(
                f"tinyimagenet test split missing: {stamp_file} does not exist (it labels val/images/); "
                f"re-extract {TINY_FOLDER}.zip"
            )
        for n, line in enumerate(stamp_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise ValueError(
                    f"{stamp_file}:{n}: expected 'filename<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h' with a wnid "
                    f"listed in wnids.txt; got {line!r}"
                )
            files.append(base / "val" / "images" / parts[0])
            labels.append(index[parts[1]])
    if not files:
        raise FileNotFoundError(f"tinyimagenet {split} split has no images under {base}; re-extract {TINY_FOLDER}.zip")
    return files, np.asarray(labels, dtype=np.int64), stamp_file


def _tiny_class_names(base: Path, wnids: list[str]) -> list[str]:
    """Readable names from the optional ``words.txt`` (first synonym), else the wnids themselves."""
    words = base / "words.txt"
    lookup: dict[str, str] = {}
    if words.is_file():
        for line in words.read_text(encoding="utf-8").splitlines():
            wnid, _, name = line.partition("\t")
            if name.strip():
                lookup[wnid.strip()] = name.split(",")[0].strip()
    names = [lookup.get(w, w) for w in wnids]
    # ImageNet has homonyms ("crane" the bird and the machine): keep names unique.
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids, strict=True)]


def _decode_images(files: list[Path], size: int, fix: str) -> np.ndarray:
    """Decode image files to ``uint8 (N, size, size, 3)`` RGB, resizing any odd-sized file (bilinear).

    Raises:
        FileNotFoundError: A listed file is missing.
        OSError: A file cannot be decoded (truncated, damaged); the message names it and ``fix``.
    """
    from PIL import Image

    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        if not path.is_file():
            raise FileNotFoundError(f"image listed in the dataset is missing: {path}; {fix}")
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")  # decodes: a truncated file fails here, not at open
        except (OSError, ValueError, SyntaxError) as err:
            raise OSError(f"cannot decode image {path} ({type(err).__name__}: {err}); the file is damaged: {fix}") from err
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(rgb, dtype=np.uint8)
    return out


def _read_decoded(cache: Path, labels: np.ndarray) -> np.ndarray | None:
    """The cached decoded images if the cache exists and matches ``labels``, else ``None``.

    A cache that exists but is damaged or holds other images is reported (``RuntimeWarning``
    naming it) and decoded again; it is never unpickled.
    """
    if not cache.is_file():
        return None
    n = labels.shape[0]
    try:
        arrays = read_npz(cache, {"images": (np.uint8, (n, TINY_SIZE, TINY_SIZE, 3)), "labels": (np.int64, (n,))})
        if not np.array_equal(arrays["labels"], labels):
            raise CacheError("its labels differ from the dataset folder's")
    except CacheError as err:
        warnings.warn(
            f"decoded-image cache {cache} cannot be used ({err}); decoding the images again", RuntimeWarning, stacklevel=3
        )
        return None
    return arrays["images"]


def load_digits(split: str, root: Path, download: bool) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (offline), upsampled to 32x32 RGB; fixed 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ModuleNotFoundError(
            'The "digits" dataset needs scikit-learn, which is not installed. Install it with '
            'pip install "vitskip[digits]" (or uv sync --extra digits), or use the built-in "shapes" dataset.',
            name="sklearn",
        ) from err
    import torch.nn.functional as F

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1)  # (N, 1, 8, 8), 0..16
    x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = (x * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    n_train = int(DIGITS_TRAIN_FRACTION * len(labels))
    idx = perm[:n_train] if split == "train" else perm[n_train:]
    return ImageDataset("digits", split, images[idx].contiguous(), labels[idx], [str(d) for d in range(10)], HALF, HALF)
