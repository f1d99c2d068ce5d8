"""The one file format of every NSGA-II result: a Pareto front as a tidy frame (parquet + CSV).

Every search (``layers``, ``rewards``, ``joint``) writes ``front.parquet`` and ``front.csv`` with at
least the columns of :data:`FRONT_COLUMNS`, one row per non-dominated individual, so the analysis
package and ``train/benchmark.py`` read all of them alike. Searches add their own columns (the
layer mask, the reward weights, the model file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.readers import FRONT_COLUMNS, read_front  # the format's columns and reader live with the analysis
from analysis.stats import non_dominated_mask
from vitskip_env.files import atomic_path

__all__ = ["FRONT_COLUMNS", "mask_to_str", "non_dominated", "read_front", "str_to_mask", "write_front"]


def mask_to_str(mask: Sequence[bool] | np.ndarray) -> str:
    """``[1, 0, 1]`` -> ``"101"`` (the ``kept`` column of layer-subset fronts; block 0 first)."""
    return "".join("1" if bool(b) else "0" for b in np.asarray(mask).reshape(-1))


def str_to_mask(text: str) -> np.ndarray:
    """``"101"`` -> ``bool [True, False, True]``.

    Raises:
        ValueError: ``text`` holds anything but ``0`` and ``1``.
    """
    if not text or set(text) - {"0", "1"}:
        raise ValueError(f"a layer mask is a string of 0 and 1 (one per block, block 0 first), got {text!r}")
    return np.array([c == "1" for c in text], dtype=bool)


def non_dominated(frame: pd.DataFrame, minimize: Sequence[str] = ("error", "compute")) -> pd.Series:
    """``bool`` Series: rows no other row dominates (all objectives ``<=``, one ``<``), all minimised."""
    return pd.Series(non_dominated_mask(frame[list(minimize)].to_numpy(dtype=float)), index=frame.index)


def write_front(frame: pd.DataFrame, out_dir: str | os.PathLike, name: str = "front") -> Path:
    """Write ``out_dir/<name>.parquet`` and ``.csv`` atomically; returns the parquet path.

    Raises:
        ValueError: A column of :data:`FRONT_COLUMNS` is missing.
    """
    missing = [c for c in FRONT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"a front needs the columns {list(FRONT_COLUMNS)}; missing {missing}")
    out = Path(out_dir)
    with atomic_path(out / f"{name}.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(out / f"{name}.csv") as tmp:
        frame.to_csv(tmp, index=False)
    return out / f"{name}.parquet"
