"""Checked reading and atomic writing of the package's ``.npz`` array caches (never unpickles).

A cache file is only a shortcut: anything wrong with it (truncated, emptied, bytes flipped, arrays
of another shape or dtype, a foreign file under the right name) must lead to regeneration, never to
an exception deep inside numpy or to silently wrong data. :func:`read_npz` therefore checks each
array's header against the expected dtype and shape *before* reading its data (a flipped digit in a
stored shape cannot make it allocate gigabytes), reads every member to its end so that the zip
CRC-32 is verified, and reports any problem as one :class:`CacheError` whose message says what was
wrong.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..files import atomic_path

#: Expected ``(dtype, shape)`` of each array, by name.
ArraySpec = Mapping[str, tuple[np.dtype | type, tuple[int, ...]]]


class CacheError(ValueError):
    """A cache file cannot be used; the message says why (the caller regenerates the file)."""


def read_npz(path: str | os.PathLike, spec: ArraySpec) -> dict[str, np.ndarray]:
    """Read the arrays named in ``spec`` from the ``.npz`` file ``path``, checking dtype and shape.

    Only plain (non-object) arrays are read; nothing is ever unpickled.

    Args:
        path: The cache file, as written by :func:`write_npz` (or ``np.savez``).
        spec: For each array name, the expected ``(dtype, shape)``.

    Returns:
        The arrays (writable, C-contiguous), by name.

    Raises:
        CacheError: The file is unreadable or damaged, or an array is missing or has another dtype
            or shape; the message names the problem (not the file: the caller knows it).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            return {name: _read_member(zf, members, name, np.dtype(dtype), shape) for name, (dtype, shape) in spec.items()}
    except CacheError:
        raise
    except Exception as err:  # a damaged file can fail anywhere in zipfile or in numpy's header parser
        raise CacheError(f"unreadable, {type(err).__name__}: {err}") from err


def _read_member(zf: zipfile.ZipFile, members: set[str], name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    member = f"{name}.npy"
    if member not in members:
        raise CacheError(f"no array {name!r} (found {sorted(members)})")
    with zf.open(member) as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        got_shape, fortran_order, got_dtype = read_header(fh)
        if got_dtype != dtype or tuple(got_shape) != tuple(shape) or fortran_order:
            order = " (Fortran order)" if fortran_order else ""
            raise CacheError(f"array {name!r} is {got_dtype} {tuple(got_shape)}{order}; expected {dtype} {tuple(shape)}")
        out = np.empty(shape, dtype=dtype)
        view = memoryview(out).cast("B")
        filled = 0
        while filled < view.nbytes:
            n = fh.readinto(view[filled:])
            if not n:
                raise CacheError(f"array {name!r} is truncated ({filled} of {view.nbytes} data bytes)")
            filled += n
        if fh.read(1):  # reading to the end also makes zipfile verify the member's CRC-32
            raise CacheError(f"array {name!r} has trailing bytes after its data")
    return out


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz``, atomically (no partial file on a crash)."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz"
        np.savez(fh, **arrays)
