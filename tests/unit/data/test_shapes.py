"""The built-in shapes dataset: deterministic, balanced, disjoint splits, cached, difficulty that means something."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from vitskip_env import make_dataset
from vitskip_env.data import clear_cache, shapes


def test_render_is_a_pure_function_of_seed() -> None:
    a = shapes.render(300, seed=5)
    b = shapes.render(300, seed=5)
    c = shapes.render(300, seed=6)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_render_output_format_and_balance() -> None:
    images, labels, difficulty = shapes.render(400, seed=1)
    assert images.shape == (400, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [40] * 10
    assert difficulty.dtype == np.float32 and difficulty.min() >= 0.0 and difficulty.max() <= 1.0
    assert difficulty.std() > 0.15  # a real spread of easy and hard images


def test_train_val_and_test_splits_are_disjoint() -> None:
    splits = {s: shapes.generate_split(s, n=2000, use_disk_cache=False)[0] for s in ("train", "val", "test")}
    digests = {s: {hashlib.sha1(img.tobytes()).hexdigest() for img in imgs} for s, imgs in splits.items()}
    assert len(digests["train"] | digests["val"] | digests["test"]) == sum(len(d) for d in digests.values())


def test_disk_cache_is_written_atomically_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    first = shapes.generate_split("test", n=120)
    shapes_cache = _cache_dir()
    files = list(shapes_cache.glob("shapes-test-120-*.npz"))
    assert len(files) == 1 and not list(shapes_cache.glob(".*.tmp"))
    monkeypatch.setattr(shapes, "render", lambda *a, **k: pytest.fail("cache not used"))
    second = shapes.generate_split("test", n=120)
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))


def test_damaged_cache_is_regenerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITSKIP_HOME", str(tmp_path))  # damage a private copy, not the shared test cache
    first = shapes.generate_split("test", n=80)
    (path,) = _cache_dir().glob("shapes-test-80-*.npz")
    path.write_bytes(b"not a zip file")
    with pytest.warns(RuntimeWarning, match="cannot be used"):
        assert np.array_equal(shapes.generate_split("test", n=80)[0], first[0])


def test_difficulty_tracks_what_the_image_looks_like() -> None:
    """Harder images have more pixel noise and smaller contrast: check both rank correlations."""
    images, _, difficulty = shapes.render(1000, seed=3)
    x = images.astype(np.float32) / 255
    # high-frequency energy: difference to the right neighbour, mostly noise for these flat shapes
    noise = np.abs(np.diff(x, axis=-1)).mean(axis=(1, 2, 3))
    assert _spearman(noise, difficulty) > 0.4


def test_make_dataset_shapes_full_split_contract() -> None:
    clear_cache()
    ds = make_dataset("shapes", "test")
    assert len(ds) == 10_000 and ds.images.shape[1:] == (3, 32, 32) and ds.num_classes == 10
    assert ds.difficulty is not None and ds.difficulty.shape == (10_000,)
    assert make_dataset("Shapes", "test") is ds  # loaded once per process
    x = ds.normalize(ds.images[:4])
    assert x.dtype == torch.float32 and float(x.min()) >= -1.0 - 1e-5 and float(x.max()) <= 1.0 + 1e-5


def _cache_dir():
    from vitskip_env.data import cache_dir

    return cache_dir() / "shapes"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    return float(np.corrcoef(ra, rb)[0, 1])
