"""analysis.plots: every figure has a title, labelled axes and the data; PNGs are figsize x dpi, SVGs non-empty."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_analysis_frames import CLASSES, episodes

from analysis import plots
from analysis.frames import from_episodes


@pytest.fixture
def frame() -> pd.DataFrame:
    return from_episodes(episodes(), CLASSES)


def bench() -> pd.DataFrame:
    rows = []
    for device, dtype in (("cpu", "float32"), ("cuda", "bfloat16")):
        for batch in (1, 4, 64):
            for model, speed in (("static", 100.0), ("dynamic", 180.0), ("random", 120.0), ("static_subset", 150.0)):
                rows.append({"device": device, "dtype": dtype, "threads": 2, "batch": batch, "model": model,
                             "images_per_s": speed * batch ** 0.5})  # fmt: skip
    return pd.DataFrame(rows)


def check_png(fig: Figure, tmp_path: Path, name: str) -> None:
    files = plots.save_figure(fig, tmp_path / name)
    assert [f.name for f in files] == [f"{name}.png", f"{name}.svg"]
    image = matplotlib.image.imread(files[0])
    width, height = fig.get_size_inches() * plots.DPI
    assert image.shape[:2] == (round(height), round(width))
    assert image[..., :3].std() > 0.01  # not a blank canvas
    assert files[1].read_text(encoding="utf-8").lstrip().startswith("<?xml") and files[1].stat().st_size > 5000


def labelled(ax) -> None:
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_class_block_heatmap(frame: pd.DataFrame, tmp_path: Path) -> None:
    fig = plots.plot_class_block_heatmap(frame)
    ax, bar = fig.axes  # the heatmap and its colour bar
    labelled(ax)
    assert "execute rate" in bar.get_ylabel()
    np.testing.assert_allclose(ax.images[0].get_array(), [[1.0, 0.5, 0.5, 0.0], [1.0, 1.0, 0.5, 0.5]])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]
    assert tuple(fig.get_size_inches()) == plots.FIGSIZE
    check_png(fig, tmp_path, "heatmap")


def test_heatmap_grows_with_the_number_of_classes() -> None:
    n = 40
    ep = {k: np.repeat(v, 10, axis=0) for k, v in episodes().items()}
    ep |= {"image_index": np.arange(n), "label": np.arange(n)}
    fig = plots.plot_class_block_heatmap(from_episodes(ep, [f"class {i}" for i in range(n)]))
    assert fig.get_size_inches()[1] == pytest.approx(1.5 + 0.25 * n)


def test_depth_histogram(frame: pd.DataFrame, tmp_path: Path) -> None:
    fig = plots.plot_depth_histogram(frame)
    (ax,) = fig.axes
    labelled(ax)
    bars = ax.patches
    correct = [b.get_height() for b in bars[:5]]  # depths 0..4
    wrong = [b.get_height() for b in bars[5:]]
    assert correct == [0, 0, 3, 0, 0] and wrong == [0, 0, 0, 0, 1]  # depth 2: three right; depth 4: one wrong
    assert "of 4" in ax.get_xlabel()
    check_png(fig, tmp_path, "hist")


def test_accuracy_vs_depth(frame: pd.DataFrame, tmp_path: Path) -> None:
    fig = plots.plot_accuracy_vs_depth(frame, static_top1=90.0)
    (ax,) = fig.axes
    labelled(ax)
    assert "%" in ax.get_ylabel()
    points = ax.collections[0].get_offsets()
    np.testing.assert_allclose(points, [[2, 100.0], [4, 0.0]])
    hlines = [line.get_ydata()[0] for line in ax.lines[1:]]
    assert hlines == pytest.approx([75.0, 90.0])  # overall dynamic top-1, static top-1
    check_png(fig, tmp_path, "acc")


def test_throughput_one_panel_per_device_and_dtype(tmp_path: Path) -> None:
    fig = plots.plot_throughput(bench())
    assert len(fig.axes) == 2 and fig.get_suptitle()
    for ax in fig.axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.xaxis.get_transform().base == 2
        assert ax.get_xlabel() and ax.get_title()
        assert [line.get_label() for line in ax.lines] == ["static", "dynamic", "random", "static_subset"]
        np.testing.assert_allclose(ax.lines[1].get_xydata(), [[1, 180.0], [4, 360.0], [64, 1440.0]])
    assert "images/s" in fig.axes[0].get_ylabel()
    assert [ax.get_title() for ax in fig.axes] == ["cpu · float32", "cuda · bfloat16"]
    assert tuple(fig.get_size_inches()) == (10.0, 5.0)
    check_png(fig, tmp_path, "throughput")
    with pytest.raises(ValueError, match=r"missing columns \['images_per_s'\]"):
        plots.plot_throughput(bench().drop(columns="images_per_s"))
    with pytest.raises(ValueError, match="empty"):
        plots.plot_throughput(bench().iloc[0:0])


def test_pareto_with_dynamic_policies_marked(tmp_path: Path) -> None:
    front = pd.DataFrame({"executed_blocks": [2.0, 3.0, 3.0, 4.0], "top1": [80.0, 85.0, 82.0, 86.0]})
    dynamic = pd.DataFrame({"executed_blocks": [2.6], "top1": [88.6], "name": ["ppo"]})
    fig = plots.plot_pareto({"layers": front}, dynamic)
    (ax,) = fig.axes
    labelled(ax)
    assert ax.get_xlabel() == plots.LABELS["executed_blocks"] and ax.get_ylabel() == plots.LABELS["top1"]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), front.to_numpy())  # every point
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[2, 80], [3, 85], [4, 86]])  # the non-dominated ones
    np.testing.assert_allclose(ax.collections[1].get_offsets(), [[2.6, 88.6]])  # the dynamic policy, a star
    assert [t.get_text() for t in ax.texts] == ["ppo"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["layers (3 of 4 on the front)", "dynamic policy"]
    check_png(fig, tmp_path, "pareto")
    errors = front.assign(error=100 - front["top1"])
    fig = plots.plot_pareto({"layers": errors}, y="error")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xydata(), [[2, 20], [3, 15], [4, 14]])
    with pytest.raises(ValueError, match=r"'layers' has no column \['compute'\]"):
        plots.plot_pareto({"layers": front}, x="compute")


def test_pareto_draws_into_given_axes() -> None:
    fig = Figure()
    ax = fig.add_subplot()
    out = plots.plot_pareto({"a": pd.DataFrame({"executed_blocks": [1.0], "top1": [50.0]})}, ax=ax)
    assert out is fig and len(ax.lines) == 1


def test_block_rates_of_several_frames(frame: pd.DataFrame, tmp_path: Path) -> None:
    fig = plots.plot_block_rates({"a": frame, "b": frame})
    (ax,) = fig.axes
    labelled(ax)
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([1.0, 0.75, 0.5, 0.25] * 2)
    check_png(fig, tmp_path, "rates")


def test_save_figure_formats(frame: pd.DataFrame, tmp_path: Path) -> None:
    fig = plots.plot_depth_histogram(frame)
    assert plots.save_figure(fig, tmp_path / "x.png", formats=("png",)) == [tmp_path / "x.png"]
    with pytest.raises(ValueError, match="formats"):
        plots.save_figure(fig, tmp_path / "x", formats=("gif",))
    assert not list(tmp_path.glob(".*.tmp"))
