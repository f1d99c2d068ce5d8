"""Shared fixtures: every test writes only under its tmp folder and uses few threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fakedata import write_mini_cifar10, write_mini_cifar100, write_mini_tiny

#: Rendered splits of the built-in datasets persist here between test sessions (git-ignored ``.cache/``).
#: Their file names hash the generator version and the torch version, so a stale file is never read,
#: and a read validates the file; rendering a 10k-image split costs 5-15 s on two CPU cores, which
#: every session would otherwise pay.
PROCEDURAL_CACHES = {
    name: Path(__file__).resolve().parents[1] / ".cache" / f"test-{name}" for name in ("shapes", "relations", "pointers")
}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the package's cache at a per-session tmp folder (built-in dataset caches shared across sessions)."""
    home = tmp_path_factory.getbasetemp() / "vitskip_home"
    for name, shared in PROCEDURAL_CACHES.items():
        link = home / name
        if link.exists():
            continue
        home.mkdir(parents=True, exist_ok=True)
        try:
            shared.mkdir(parents=True, exist_ok=True)
            link.symlink_to(shared, target_is_directory=True)
        except OSError:
            pass  # read-only checkout: the session generates its own copy under `home`
    monkeypatch.setenv("VITSKIP_HOME", str(home))
    monkeypatch.delenv("VITSKIP_DATA", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    # $VITSKIP_TEST_THREADS=1 on a busy host: with two threads every tiny op waits for a descheduled
    # peer thread (measured 0.05 ms -> 23 ms for a batch-1 patch embedding while a training job ran).
    torch.set_num_threads(int(os.environ.get("VITSKIP_TEST_THREADS", "2")))


@pytest.fixture
def mini_cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A 5+3 image CIFAR-100 under ``tmp_path / "data"`` (see ``tests/fakedata.py``)."""
    return write_mini_cifar100(tmp_path / "data", monkeypatch)


@pytest.fixture
def mini_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A 10+3 image CIFAR-10 under ``tmp_path / "data"``."""
    return write_mini_cifar10(tmp_path / "data", monkeypatch)


@pytest.fixture
def mini_tiny(tmp_path: Path) -> dict:
    """A 12+6 image Tiny-ImageNet under ``tmp_path / "data"``."""
    return write_mini_tiny(tmp_path / "data")


#: Environment keyword arguments for fast tests: a 4-block, 32-wide untrained ViT on 64 shapes images.
MICRO = {
    "dataset": "shapes",
    "split": "test",
    "backbone": "micro",
    "backbone_weights": "random",
    "num_images": 64,
    "device": "cpu",
}


@pytest.fixture
def micro_kwargs() -> dict:
    """A fresh copy of :data:`MICRO` (tests may change it)."""
    return dict(MICRO)
