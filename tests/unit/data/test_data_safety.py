"""Dataset safety: damaged caches are regenerated, bad custom datasets and failed downloads fail clearly."""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.request
import zipfile
from email.message import Message
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import DAMAGES, damage

from vitskip_env.data import DatasetDownloadError, ImageDataset, cache_dir, make_dataset, shapes
from vitskip_env.data import registry as data

N = 60  # a tiny shapes split: rendering it takes milliseconds
SEED = shapes.SPLIT_SEEDS["test"]


def _shapes_cache_file() -> Path:
    (path,) = (cache_dir() / "shapes").glob(f"shapes-test-{N}-*.npz")
    return path


def _assert_same(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    for x, y in zip(got, want, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def _assert_cache_now_valid(monkeypatch: pytest.MonkeyPatch, fresh: tuple[np.ndarray, ...]) -> None:
    """The regenerated file is read back as is: no render, no warning, the same arrays."""
    monkeypatch.setattr(shapes, "render", lambda *a, **k: pytest.fail("the regenerated cache was not reused"))
    _assert_same(shapes.generate_split("test", n=N), fresh)


# --------------------------------------------------------------------------------- shapes disk cache
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_shapes_cache_is_regenerated_with_a_warning_naming_it(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = shapes.render(N, SEED)
    shapes.generate_split("test", n=N)
    path = _shapes_cache_file()
    damage(path, how)
    with pytest.warns(RuntimeWarning, match=re.escape(str(path))):
        got = shapes.generate_split("test", n=N)
    _assert_same(got, fresh)
    _assert_cache_now_valid(monkeypatch, fresh)


def _tamper(arrays: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    out = dict(arrays)
    if how == "fewer images":
        out = {k: v[: N - 10] for k, v in arrays.items()}
    elif how == "more images":
        extra = shapes.render(N + 10, SEED + 1)
        out = dict(zip(("images", "labels", "difficulty"), extra, strict=True))
    elif how == "labels int32":
        out["labels"] = arrays["labels"].astype(np.int32)
    elif how == "label out of range":
        out["labels"] = arrays["labels"].copy()
        out["labels"][3] = len(shapes.SHAPE_CLASSES)
    elif how == "images float":
        out["images"] = arrays["images"].astype(np.float32)
    elif how == "difficulty nan":
        out["difficulty"] = arrays["difficulty"].copy()
        out["difficulty"][0] = np.nan
    elif how == "array missing":
        del out["difficulty"]
    return out


@pytest.mark.parametrize(
    "how",
    ["fewer images", "more images", "labels int32", "label out of range", "images float", "difficulty nan", "array missing"],
)
def test_readable_shapes_cache_with_wrong_contents_is_regenerated(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = shapes.render(N, SEED)
    shapes.generate_split("test", n=N)
    path = _shapes_cache_file()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    with open(path, "wb") as fh:  # a well-formed npz under the right name, holding the wrong thing
        np.savez(fh, **_tamper(arrays, how))
    with pytest.warns(RuntimeWarning, match=re.escape(str(path))):
        got = shapes.generate_split("test", n=N)
    _assert_same(got, fresh)
    _assert_cache_now_valid(monkeypatch, fresh)


def test_shapes_cache_header_is_checked_before_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged stored shape is refused from the header alone: nothing is allocated for it."""
    fresh = shapes.render(N, SEED)
    shapes.generate_split("test", n=N)
    path = _shapes_cache_file()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 3, 32, 32)})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", header.getvalue() + fresh[0].tobytes())
        for name, array in (("labels", fresh[1]), ("difficulty", fresh[2])):
            buf = io.BytesIO()
            np.save(buf, array)
            zf.writestr(f"{name}.npy", buf.getvalue())
    with pytest.warns(RuntimeWarning, match=re.escape(str(path)) + r".*\(1000000000000, 3, 32, 32\)"):
        got = shapes.generate_split("test", n=N)
    _assert_same(got, fresh)


class _Tripwire:
    """Unpickling this records it: proves whether a cache reader ran pickle."""

    def __reduce__(self) -> tuple:
        return (_UNPICKLED.append, ("unpickled",))


_UNPICKLED: list[str] = []


def test_shapes_cache_is_never_unpickled() -> None:
    fresh = shapes.render(N, SEED)
    shapes.generate_split("test", n=N)
    path = _shapes_cache_file()
    labels = np.empty(N, dtype=object)
    labels[:] = [_Tripwire()] * N
    with open(path, "wb") as fh:
        np.savez(fh, images=fresh[0], labels=labels, difficulty=fresh[2])  # an object array is stored pickled
    _UNPICKLED.clear()
    with pytest.warns(RuntimeWarning, match=re.escape(str(path))):
        got = shapes.generate_split("test", n=N)
    assert _UNPICKLED == []
    _assert_same(got, fresh)


# ------------------------------------------------------------------------ Tiny-ImageNet decoded cache
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_decoded_tinyimagenet_cache_is_decoded_again(mini_tiny: dict, how: str) -> None:
    first = make_dataset("tinyimagenet", "test", root=mini_tiny["root"])
    (path,) = (cache_dir() / "decoded").glob("tinyimagenet-test-*.npz")
    damage(path, how)
    data.clear_cache()
    with pytest.warns(RuntimeWarning, match=re.escape(str(path))):
        again = make_dataset("tinyimagenet", "test", root=mini_tiny["root"])
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)


# ------------------------------------------------------------------------------------ custom datasets
def _images(n: int = 4) -> torch.Tensor:
    return torch.zeros(n, 3, 8, 8, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": torch.tensor([0, 1, 2, 1])}, r"labels must be in \[0, 2\) for its 2 classes; got labels 0\.\.2"),
        ({"labels": torch.tensor([0, -1, 1, 1])}, r"labels must be in \[0, 2\).*got labels -1\.\.1"),
        ({"labels": torch.tensor([0.0, 1.0, 1.0, 0.0])}, r"labels must be integer class indices.*float32"),
        ({"labels": torch.tensor([0, 1, 1])}, r"labels must have shape \(4,\) to match 4 images; got \(3,\)"),
        ({"images": torch.zeros(4, 3, 8, 8)}, r"images must be uint8 \(N, 3, H, W\); got torch\.float32"),
        ({"images": torch.zeros(4, 8, 8, 3, dtype=torch.uint8)}, r"images must be uint8 \(N, 3, H, W\).*\(4, 8, 8, 3\)"),
        ({"classes": []}, r"classes must name at least one class"),
        (
            {"difficulty": torch.rand(3)},
            r"difficulty must be a float tensor of shape \(4,\) or None; got torch\.float32 \(3,\)",
        ),
        ({"difficulty": torch.tensor([0.0, 0.5, 1.5, 1.0])}, r"difficulty must lie in \[0, 1\]"),
    ],
)
def test_custom_dataset_is_checked_at_construction(kwargs: dict, message: str) -> None:
    args = {"images": _images(), "labels": torch.tensor([0, 1, 1, 0]), "classes": ["a", "b"], **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        ImageDataset("mine", "train", **args)
    assert "dataset 'mine' (train split)" in str(info.value)


def test_custom_dataset_with_non_tensor_labels_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"labels must be a torch\.Tensor, got list"):
        ImageDataset("mine", "train", _images(), [0, 1, 1, 0], ["a", "b"])  # type: ignore[arg-type]


def test_valid_custom_dataset_converts_labels_to_int64() -> None:
    ds = ImageDataset("mine", "train", _images(), torch.tensor([0, 1, 1, 0], dtype=torch.int32), ["a", "b"])
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0, 1, 1, 0]
    assert ds.num_classes == 2 and len(ds) == 4


def test_registered_loader_with_bad_labels_fails_in_make_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(data._LOADERS, "badlabels", lambda split, root, download: None)

    @data.register_dataset("badlabels")
    def _bad(split: str, root: Path, download: bool) -> ImageDataset:
        return ImageDataset("badlabels", split, _images(), torch.tensor([0, 1, 2, 10]), ["a", "b", "c"])

    with pytest.raises(ValueError, match=r"dataset 'badlabels' \(test split\): labels must be in \[0, 3\)"):
        make_dataset("badlabels", "test")


# --------------------------------------------------------------------------------- missing / download
def _offline(exc: Exception) -> object:
    def urlopen(*args: object, **kwargs: object) -> None:
        raise exc

    return urlopen


OFFLINE = [
    urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
    urllib.error.HTTPError("http://example.invalid", 503, "Service Unavailable", Message(), None),
    ConnectionResetError(104, "Connection reset by peer"),
]


@pytest.mark.parametrize("exc", OFFLINE, ids=["URLError", "HTTPError", "reset"])
@pytest.mark.parametrize(
    ("name", "folder", "url_part"),
    [
        ("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz"),
        ("tinyimagenet", "tiny-imagenet-200", "tiny-imagenet-200.zip"),
    ],
)
def test_offline_download_fails_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception, name: str, folder: str, url_part: str
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", _offline(exc))  # torchvision's downloader calls this
    root = tmp_path / "data"
    with pytest.raises(DatasetDownloadError) as info:
        make_dataset(name, "test", root=root, download=True)
    message = str(info.value)
    assert isinstance(info.value, OSError) and not isinstance(info.value, urllib.error.URLError)
    assert message.startswith(f"Downloading {name} from ") and url_part in message
    assert type(exc).__name__ in message  # the cause, in one line
    assert str(root / folder) in message  # where the data was looked for
    assert "extract it into" in message and "without download=True" in message  # how to place it by hand
    assert "\n" not in message


def test_partial_tinyimagenet_archive_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", _offline(AssertionError("no network access expected")))
    root = tmp_path / "data"
    root.mkdir()
    archive = root / "tiny-imagenet-200.zip"
    archive.write_bytes(b"PK\x03\x04 an interrupted download")  # torchvision reuses it without a checksum
    with pytest.raises(DatasetDownloadError, match=re.escape(str(archive)) + r".*delete it and retry"):
        make_dataset("tinyimagenet", "test", root=root, download=True)


# ------------------------------------------------------------------------------ damaged Tiny-ImageNet
@pytest.mark.parametrize("keep", [0.5, 10])
def test_truncated_tinyimagenet_jpeg_is_named(mini_tiny: dict, keep: float) -> None:
    jpeg = mini_tiny["root"] / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG"
    raw = jpeg.read_bytes()
    jpeg.write_bytes(raw[: int(len(raw) * keep) if keep < 1 else int(keep)])
    with pytest.raises(OSError, match=re.escape(str(jpeg)) + r".*damaged.*re-extract tiny-imagenet-200\.zip") as info:
        make_dataset("tinyimagenet", "test", root=mini_tiny["root"])
    assert "download=True" in str(info.value)
    assert not list((cache_dir() / "decoded").glob("*.npz"))  # nothing half-decoded was cached
