"""What every built-in procedural dataset shares: rendering is a pure function of the seed, a damaged cache is redrawn."""

from __future__ import annotations

import re
from types import ModuleType

import numpy as np
import pytest
from fakedata import DAMAGES, damage

from vitskip_env.data import cache_dir, pointers, relations

MODULES = pytest.mark.parametrize("module", [relations, pointers], ids=lambda m: m.__name__.rsplit(".", 1)[-1])


@MODULES
def test_render_is_a_pure_function_of_seed(module: ModuleType) -> None:
    a, b, c = module.render(64, 5), module.render(64, 5), module.render(64, 6)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[2].dtype == np.float32 and a[2].min() >= 0.0 and a[2].max() <= 1.0  # difficulty


@MODULES
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_cache_is_regenerated_then_reused(module: ModuleType, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name, n = module.GENERATOR.name, 64
    fresh = module.render(n, module.SPLIT_SEEDS["val"])
    module.GENERATOR.split("val", n=n)
    (path,) = (cache_dir() / name).glob(f"{name}-val-{n}-*.npz")
    damage(path, how)
    with pytest.warns(RuntimeWarning, match=re.escape(str(path))):
        got = module.GENERATOR.split("val", n=n)
    assert all(np.array_equal(x, y) for x, y in zip(got, fresh, strict=True))
    monkeypatch.setattr(module, "render", lambda *a, **k: pytest.fail("the regenerated cache was not reused"))
    assert np.array_equal(module.GENERATOR.split("val", n=n)[1], fresh[1])
