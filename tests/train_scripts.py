"""Load a ``train/`` script in the test process (no interpreter start-up), its folder on ``sys.path``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TRAIN = Path(__file__).resolve().parents[1] / "train"


def load_train_script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``train/<name>.py`` as the module ``train_<name>`` (registered in ``sys.modules``: dataclasses look it up)."""
    monkeypatch.syspath_prepend(str(TRAIN))  # the scripts import their helpers (``common``...) by plain name
    spec = importlib.util.spec_from_file_location(f"train_{name}", TRAIN / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, f"train_{name}", module)
    spec.loader.exec_module(module)
    return module
