"""Statistics of skip frames: where the compute goes, for which images, and at what accuracy.

Every function takes the tidy skip frame of :mod:`analysis.frames` (one row per image x block) and
returns a plain pandas object. Accuracies are in percent, depths in blocks; "depth" of an image is
its ``executed_blocks``. :func:`pareto_front` works on any frame (runs, NSGA-II fronts, benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from .frames import depth_of, executed_matrix, image_frame


def overall(frame: pd.DataFrame) -> dict[str, float]:
    """Headline numbers of a skip frame.

    Returns:
        ``images``, ``depth``, ``top1`` (%), ``executed_blocks`` (mean), ``executed_frac`` (of
        depth), ``mean_confidence`` (NaN if unknown), ``difficulty_corr`` (Spearman, NaN if unknown).
    """
    images = image_frame(frame)
    depth = depth_of(frame)
    mean_depth = float(images["executed_blocks"].mean())
    return {
        "images": len(images),
        "depth": depth,
        "top1": 100.0 * float(images["correct"].mean()),
        "executed_blocks": mean_depth,
        "executed_frac": mean_depth / depth if depth else math.nan,
        "mean_confidence": float(images["confidence"].mean()),
        "difficulty_corr": difficulty_corr(frame),
    }


def block_rates(frame: pd.DataFrame) -> pd.Series:
    """Execute rate of every block (fraction of images that ran it), indexed by ``block``."""
    return frame.groupby("block")["executed"].mean().rename("execute_rate")


def class_depth(frame: pd.DataFrame) -> pd.DataFrame:
    """Per true class (index ``class_name``, in label order): ``images``, ``mean_depth`` (blocks), ``top1`` (%)."""
    images = image_frame(frame)
    grouped = images.groupby("class_name", observed=True)
    out = pd.DataFrame({
        "images": grouped.size(),
        "mean_depth": grouped["executed_blocks"].mean(),
        "top1": 100.0 * grouped["correct"].mean(),
    })  # fmt: skip
    return out


def class_block_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Execute rate per true class (rows, label order) and block (columns): the heatmap's data."""
    rates = frame.groupby(["class_name", "block"], observed=True)["executed"].mean()
    return rates.unstack("block")


def top1_by_depth(frame: pd.DataFrame) -> pd.DataFrame:
    """Per depth (index ``executed_blocks``, the depths that occur): ``images``, ``share`` (of all
    images), ``top1`` (%) and ``mean_confidence``."""
    images = image_frame(frame)
    grouped = images.groupby("executed_blocks")
    counts = grouped.size()
    return pd.DataFrame({
        "images": counts,
        "share": counts / len(images),
        "top1": 100.0 * grouped["correct"].mean(),
        "mean_confidence": grouped["confidence"].mean(),
    })  # fmt: skip


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties), ignoring pairs with a NaN; NaN when
    fewer than two pairs remain or either side is constant."""
    a = pd.Series(np.asarray(x, dtype=float))
    b = pd.Series(np.asarray(y, dtype=float))
    keep = a.notna() & b.notna()
    ra, rb = a[keep].rank(method="average"), b[keep].rank(method="average")
    if len(ra) < 2 or ra.nunique() < 2 or rb.nunique() < 2:
        return math.nan
    return float(np.corrcoef(ra.to_numpy(), rb.to_numpy())[0, 1])


def difficulty_corr(frame: pd.DataFrame) -> float:
    """Spearman rank correlation of image difficulty and depth (NaN when difficulty is unknown).

    Positive: the policy spends more blocks on harder images.
    """
    images = image_frame(frame)
    return spearman(images["difficulty"], images["executed_blocks"])


def depth_by_difficulty(frame: pd.DataFrame, bins: int = 5) -> pd.DataFrame:
    """Images in ``bins`` equal-width difficulty bins ``[0, 0.2), ..., [0.8, 1]`` (index: the bins'
    intervals, all listed): ``images``, ``mean_depth`` (blocks), ``top1`` (%). Empty when difficulty is unknown."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    images = image_frame(frame).dropna(subset=["difficulty"])
    intervals = pd.IntervalIndex.from_breaks(np.linspace(0.0, 1.0, bins + 1), closed="left")
    binned = pd.cut(images["difficulty"].clip(0.0, np.nextafter(1.0, 0.0)), intervals)  # 1.0 joins the last bin
    grouped = images.groupby(binned, observed=False)
    out = pd.DataFrame({
        "images": grouped.size(),
        "mean_depth": grouped["executed_blocks"].mean(),
        "top1": 100.0 * grouped["correct"].mean(),
    })  # fmt: skip
    out.index.name = "difficulty"
    return out if len(images) else out.iloc[0:0]


def coexecution(frame: pd.DataFrame, normalize: Literal["images", "row"] = "images") -> pd.DataFrame:
    """Block co-execution matrix (rows and columns: blocks).

    Args:
        frame: A skip frame.
        normalize: ``"images"``: entry ``(i, j)`` is the fraction of images that ran both blocks ``i``
            and ``j`` (the diagonal is the execute rate). ``"row"``: the fraction of the images that
            ran ``i`` which also ran ``j``, P(j | i) (NaN for a block nobody ran).
    """
    if normalize not in ("images", "row"):
        raise ValueError(f"normalize must be 'images' or 'row', got {normalize!r}")
    mask = executed_matrix(frame).astype(np.int64)
    both = mask.T @ mask
    if normalize == "images":
        values = both / max(len(mask), 1)
    else:
        ran = np.diag(both).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(ran[:, None] > 0, both / ran[:, None], np.nan)
    index = pd.RangeIndex(mask.shape[1], name="block")
    return pd.DataFrame(values.astype(float), index=index, columns=pd.RangeIndex(mask.shape[1], name="with_block"))


def common_paths(frame: pd.DataFrame, top: int | None = 10) -> pd.DataFrame:
    """The most common skip paths: ``path`` (executed mask, block 0 first), ``images``, ``share``,
    ``executed_blocks``, ``top1`` (%), ``mean_confidence``; most frequent first (ties: by path)."""
    images = image_frame(frame)
    grouped = images.groupby("path")
    counts = grouped.size()
    out = pd.DataFrame({
        "images": counts,
        "share": counts / max(len(images), 1),
        "executed_blocks": grouped["executed_blocks"].first(),
        "top1": 100.0 * grouped["correct"].mean(),
        "mean_confidence": grouped["confidence"].mean(),
    }).reset_index()  # fmt: skip
    out = out.sort_values(["images", "path"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return out if top is None else out.head(top)


def pareto_front(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    x_better: Literal["lower", "higher"] = "lower",
    y_better: Literal["higher", "lower"] = "higher",
) -> pd.DataFrame:
    """The rows no other row dominates on ``(x, y)``, sorted by ``x``.

    A row dominates another when it is at least as good on both objectives and strictly better on
    one; by default less ``x`` (e.g. ``executed_blocks``) and more ``y`` (e.g. ``top1``) are better.
    Rows with equal values on both are all kept. Works on run summaries, NSGA-II fronts and
    benchmark rows alike.

    Raises:
        ValueError: ``x`` or ``y`` is not a column, or a direction is not ``"lower"``/``"higher"``.
    """
    for name, better in ((x, x_better), (y, y_better)):
        if name not in frame.columns:
            raise ValueError(f"pareto_front: no column {name!r}; columns are {list(frame.columns)}")
        if better not in ("lower", "higher"):
            raise ValueError(f"pareto_front: better must be 'lower' or 'higher', got {better!r} for {name!r}")
    frame = frame.dropna(subset=[x, y])
    sign = np.array([1.0 if x_better == "lower" else -1.0, 1.0 if y_better == "lower" else -1.0])
    keep = non_dominated_mask(frame[[x, y]].to_numpy(dtype=float) * sign)  # both minimised now
    return frame[keep].sort_values([x, y], kind="stable")


def non_dominated_mask(values: np.ndarray) -> np.ndarray:
    """``bool (N,)``: the rows of ``values (N, k)`` that no other row dominates, every column minimised.

    A row dominates another when it is ``<=`` on every column and ``<`` on one; equal rows are all kept.
    """
    values = np.asarray(values, dtype=float)
    keep = np.ones(len(values), dtype=bool)
    for i, v in enumerate(values):
        keep[i] = not (np.all(values <= v, axis=1) & np.any(values < v, axis=1)).any()
    return keep
