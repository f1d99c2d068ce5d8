"""Shared fixtures: every test writes only under its tmp folder and uses few threads."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the package's cache at a per-session tmp folder (shapes cache shared across tests)."""
    home = tmp_path_factory.getbasetemp() / "vitskip_home"
    monkeypatch.setenv("VITSKIP_HOME", str(home))
    monkeypatch.delenv("VITSKIP_DATA", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(2)
