"""Figures of skip frames, run comparisons, NSGA-II fronts and benchmarks.

Every function returns a ``matplotlib.figure.Figure`` built with the object-oriented API (no
``pyplot``, no display, no global figure registry: safe in scripts, servers and notebooks alike),
with a title, axis labels with units and, for colour scales, a colour bar. Functions that accept
``ax`` draw into it instead and return its figure. :func:`save_figure` writes PNG and SVG.

Sizes: :data:`FIGSIZE` inches at :data:`DPI` dots per inch unless stated (the class x block heatmap
grows with the number of classes, the throughput figure with its panels).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from vitskip_env.files import atomic_path

from .frames import depth_of, image_frame
from .readers import BENCHMARK_REQUIRED, _check_columns
from .stats import block_rates, class_block_rates, pareto_front, top1_by_depth

FIGSIZE: tuple[float, float] = (8.0, 5.0)
DPI = 150
#: Axis labels (with units) of the columns plots put on an axis.
LABELS: dict[str, str] = {
    "executed_blocks": "executed blocks per image (mean)",
    "executed_frac": "executed fraction of the blocks",
    "compute": "compute (share of block FLOPs)",
    "top1": "top-1 accuracy (%)",
    "error": "top-1 error (%)",
}
#: Columns where a smaller value is better (for Pareto fronts); all others: larger is better.
LOWER_IS_BETTER = frozenset({"executed_blocks", "executed_frac", "compute", "error", "ms_per_batch", "peak_mem_mib"})
MODEL_COLORS: dict[str, str] = {"static": "#555555", "dynamic": "#1f77b4", "random": "#ff7f0e", "static_subset": "#2ca02c"}


def _axes(ax: Axes | None, figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _nonempty(frame: pd.DataFrame, what: str) -> None:
    if len(frame) == 0:
        raise ValueError(f"nothing to plot: the {what} is empty")


def plot_class_block_heatmap(frame: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Execute rate per true class (rows) and block (columns), colour bar 0-1, values written in the cells."""
    _nonempty(frame, "skip frame")
    rates = class_block_rates(frame)
    n_classes, depth = rates.shape
    fig, ax = _axes(ax, (FIGSIZE[0], max(FIGSIZE[1], min(30.0, 1.5 + 0.25 * n_classes))))
    image = ax.imshow(rates.to_numpy(dtype=float), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="execute rate (fraction of the class's images)")
    ax.set_xticks(range(depth), [str(b) for b in rates.columns])
    ax.set_yticks(range(n_classes), [str(c) for c in rates.index])
    if n_classes * depth <= 400:
        for (i, j), value in np.ndenumerate(rates.to_numpy(dtype=float)):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="black" if value > 0.6 else "white")
    ax.set_xlabel("block (0 = first)")
    ax.set_ylabel("true class")
    ax.set_title("Execute rate per class and block")
    return fig


def plot_depth_histogram(frame: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Images per depth (executed blocks), stacked correct / wrong, with the mean depth marked."""
    _nonempty(frame, "skip frame")
    images, depth = image_frame(frame), depth_of(frame)
    counts = images.groupby(["executed_blocks", "correct"]).size().unstack("correct", fill_value=0)
    counts = counts.reindex(index=range(depth + 1), columns=[True, False], fill_value=0)
    fig, ax = _axes(ax)
    x = np.arange(depth + 1)
    ax.bar(x, counts[True], color="#2ca02c", label="correct")
    ax.bar(x, counts[False], bottom=counts[True], color="#d62728", label="wrong")
    mean = float(images["executed_blocks"].mean())
    ax.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.2f} blocks")
    ax.set_xticks(x)
    ax.set_xlabel(f"executed blocks per image (of {depth})")
    ax.set_ylabel("images")
    ax.set_title(f"Depth per image ({len(images):,} images)")
    ax.legend()
    return fig


def plot_accuracy_vs_depth(frame: pd.DataFrame, *, static_top1: float | None = None, ax: Axes | None = None) -> Figure:
    """Top-1 of the images at each depth (marker area = share of images), overall and static top-1 as lines."""
    _nonempty(frame, "skip frame")
    table = top1_by_depth(frame)
    fig, ax = _axes(ax)
    x = table.index.to_numpy()
    ax.plot(x, table["top1"], color="#1f77b4", linewidth=1, zorder=1)
    sizes = 20 + 800 * table["share"].to_numpy()  # marker areas in points^2
    ax.scatter(x, table["top1"], s=sizes, color="#1f77b4", alpha=0.7, zorder=2, label="images at this depth")
    for xi, yi, n, size in zip(x, table["top1"], table["images"], sizes, strict=True):
        lift = np.sqrt(size / np.pi) + 3  # just above the marker's edge
        ax.annotate(f"n={n:,}", (xi, yi), textcoords="offset points", xytext=(0, lift), ha="center", fontsize=7)
    ax.margins(y=0.12)
    overall = 100.0 * float(frame["correct"].mean())  # every image has one row per block
    ax.axhline(overall, color="#1f77b4", linestyle="--", linewidth=1, label=f"dynamic, all images: {overall:.2f}%")
    if static_top1 is not None:
        ax.axhline(static_top1, color="#555555", linestyle=":", linewidth=1.5, label=f"static backbone: {static_top1:.2f}%")
    ax.set_xticks(range(depth_of(frame) + 1))
    ax.set_xlabel("executed blocks per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs depth")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_throughput(bench: pd.DataFrame) -> Figure:
    """Images/s vs batch size (log2 x, log y), one line per model, one panel per device x dtype (x threads).

    Args:
        bench: The benchmark table (:data:`~analysis.readers.BENCHMARK_COLUMNS`; at least
            :data:`~analysis.readers.BENCHMARK_REQUIRED`), or a run's :func:`~analysis.readers.speed_frame`.
    """
    _check_columns(bench, BENCHMARK_REQUIRED, "a benchmark table", "plot_throughput's input")
    _nonempty(bench, "benchmark table")
    keys = ["device", "dtype"] + (["threads"] if "threads" in bench.columns and bench["threads"].nunique() > 1 else [])
    groups = list(bench.groupby(keys, sort=True, dropna=False))
    fig = Figure(figsize=(max(FIGSIZE[0], 5.0 * len(groups)), FIGSIZE[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
    for ax, (key, group) in zip(axes, groups, strict=True):
        for model, rows in group.groupby("model", sort=False):
            rows = rows.sort_values("batch")
            ax.plot(rows["batch"], rows["images_per_s"], marker="o", label=str(model), color=MODEL_COLORS.get(str(model)))
        batches = sorted(group["batch"].unique())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("batch size (images, log2 scale)")
        ax.set_title(" · ".join(str(k) for k in (key if isinstance(key, tuple) else (key,))), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("throughput (images/s, log scale)")
    fig.suptitle("Throughput vs batch size")
    return fig


def plot_pareto(
    fronts: Mapping[str, pd.DataFrame],
    dynamic: pd.DataFrame | None = None,
    *,
    x: str = "executed_blocks",
    y: str = "top1",
    ax: Axes | None = None,
) -> Figure:
    """Pareto fronts (e.g. NSGA-II results, static subsets, several runs) with dynamic policies marked.

    Args:
        fronts: ``name -> frame`` with columns ``x`` and ``y``; every point is drawn and its
            non-dominated points are joined (fewer ``x``, more ``y`` is better, or the direction of
            :data:`LOWER_IS_BETTER`).
        dynamic: Dynamic policies as distinct star markers: a frame with columns ``x`` and ``y``
            (e.g. from ``summary.json``: ``executed_blocks``, ``top1_dynamic`` renamed ``top1``),
            labelled by its ``name`` column when present, else by its index.
        x: Column on the x axis.
        y: Column on the y axis.
        ax: Draw into these axes.

    Raises:
        ValueError: A frame lacks ``x`` or ``y``, or there is nothing to plot.
    """
    frames = dict(fronts) | ({"dynamic": dynamic} if dynamic is not None else {})
    for name, f in frames.items():
        missing = [c for c in (x, y) if c not in f.columns]
        if missing:
            raise ValueError(f"plot_pareto: {name!r} has no column {missing} (columns: {list(f.columns)})")
    if not any(len(f) for f in frames.values()):
        raise ValueError("nothing to plot: every front (and dynamic) is empty")
    better = {c: "lower" if c in LOWER_IS_BETTER else "higher" for c in (x, y)}
    fig, ax = _axes(ax)
    for i, (name, front) in enumerate(fronts.items()):
        color = f"C{i % 10}"
        ax.scatter(front[x], front[y], s=14, color=color, alpha=0.35)
        best = pareto_front(front, x, y, x_better=better[x], y_better=better[y])  # type: ignore[arg-type]
        label = name if len(front) == 1 else f"{name} ({len(best)} of {len(front)} on the front)"
        ax.plot(best[x], best[y], marker="o", markersize=4, color=color, label=label)
    if dynamic is not None and len(dynamic):
        names = dynamic["name"] if "name" in dynamic.columns else pd.Series(dynamic.index, index=dynamic.index)
        label = "dynamic policy" if len(dynamic) == 1 else f"dynamic policies ({len(dynamic)}, named beside each star)"
        ax.scatter(dynamic[x], dynamic[y], marker="*", s=260, color="#d62728", edgecolor="black", zorder=5, label=label)
        for xi, yi, label in zip(dynamic[x], dynamic[y], names, strict=True):
            ax.annotate(str(label), (xi, yi), textcoords="offset points", xytext=(8, -12), fontsize=8)
    ax.margins(0.08)
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    ax.set_title(f"{LABELS.get(y, y).split(' (')[0].capitalize()} vs {LABELS.get(x, x).split(' (')[0]}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_block_rates(frames: Mapping[str, pd.DataFrame], *, ax: Axes | None = None) -> Figure:
    """Execute rate per block of several skip frames (e.g. runs) as grouped bars."""
    if not frames:
        raise ValueError("nothing to plot: no skip frames given")
    fig, ax = _axes(ax)
    width = 0.8 / len(frames)
    for i, (name, frame) in enumerate(frames.items()):
        rates = block_rates(frame)
        ax.bar(rates.index.to_numpy() + (i - (len(frames) - 1) / 2) * width, rates, width=width, label=name)
    ax.set_xlabel("block (0 = first)")
    ax.set_ylabel("execute rate (fraction of images)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Execute rate per block")
    ax.legend(fontsize=8)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats`` (atomically); returns the files.

    ``path``'s own suffix, if any, is replaced. PNGs are ``figsize x dpi`` pixels (no tight cropping).
    """
    unknown = [f for f in formats if f not in ("png", "svg", "pdf")]
    if unknown:
        raise ValueError(f"formats must be among 'png', 'svg', 'pdf'; got {unknown}")
    out = []
    for fmt in formats:
        target = Path(path).with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=fig.dpi)
        out.append(target)
    return out
