"""Every test of the data wing keeps its caches in its own tmp folder and starts with no dataset loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vitskip_env.data import clear_cache


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Caches live in tmp_path (never the shared persistent shapes cache); the per-process cache starts empty."""
    monkeypatch.setenv("VITSKIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VITSKIP_DATA", str(tmp_path / "default-data"))
    clear_cache()
    yield
    clear_cache()
