"""``assert_same``: env outputs (tuples, dict-of-arrays infos, object arrays) equal in structure, dtype and value."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_same(a: Any, b: Any, path: str = "", *, ordered: bool = True) -> None:
    """Equal structure, dtypes and values; floats up to the rounding of batched vs batch-1 matmuls.

    ``ordered=False`` compares dict keys as sets (the order in which a vector env's rows report them
    is not part of the contract).
    """
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]", ordered=ordered)
    elif isinstance(a, dict):
        keys_a, keys_b = (list(a), list(b)) if ordered else (sorted(a), sorted(b))
        assert isinstance(b, dict) and keys_a == keys_b, f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}", ordered=ordered)
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert isinstance(b, np.ndarray) and b.dtype == object and a.shape == b.shape, path
        for x, y in zip(a, b, strict=True):
            assert_same(x, y, path + "[]", ordered=ordered)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype} {b.dtype}"
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=path)
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
