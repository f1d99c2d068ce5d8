"""What every built-in procedural dataset shares: rendering is a pure function of the seed."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from vitskip_env.data import pointers, relations


@pytest.mark.parametrize("module", [relations, pointers], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_render_is_a_pure_function_of_seed(module: ModuleType) -> None:
    a, b, c = module.render(64, 5), module.render(64, 5), module.render(64, 6)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[2].dtype == np.float32 and a[2].min() >= 0.0 and a[2].max() <= 1.0  # difficulty
