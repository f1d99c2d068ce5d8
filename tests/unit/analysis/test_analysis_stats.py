"""analysis.stats on a hand-made frame: every statistic against values worked out by hand.

The frame (4 images x 4 blocks, classes cat / dog / bird, bird without images):

    image  class  path  depth  correct  confidence  difficulty
      10   cat    1100    2    yes        0.9         0.1
      11   dog    1111    4    no         0.5         1.0
      12   cat    1010    2    yes        0.7         0.5
      13   dog    1100    2    yes        0.8         0.3
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_analysis_frames import CLASSES, episodes

from analysis import stats
from analysis.frames import from_episodes


@pytest.fixture
def frame() -> pd.DataFrame:
    return from_episodes(episodes(), CLASSES)


def test_overall(frame: pd.DataFrame) -> None:
    head = stats.overall(frame)
    assert head["images"] == 4 and head["depth"] == 4
    assert head["top1"] == pytest.approx(75.0)  # 3 of 4 correct
    assert head["executed_blocks"] == pytest.approx(2.5)  # (2 + 4 + 2 + 2) / 4
    assert head["executed_frac"] == pytest.approx(0.625)  # 2.5 / 4
    assert head["mean_confidence"] == pytest.approx(0.725)  # (0.9 + 0.5 + 0.7 + 0.8) / 4
    assert head["difficulty_corr"] == pytest.approx(3 / math.sqrt(15))


def test_block_rates(frame: pd.DataFrame) -> None:
    rates = stats.block_rates(frame)
    assert rates.index.tolist() == [0, 1, 2, 3]
    assert rates.tolist() == pytest.approx([4 / 4, 3 / 4, 2 / 4, 1 / 4])


def test_class_depth_and_class_block_rates(frame: pd.DataFrame) -> None:
    table = stats.class_depth(frame)
    assert table.index.tolist() == ["cat", "dog"]  # bird has no images
    assert table["images"].tolist() == [2, 2]
    assert table["mean_depth"].tolist() == pytest.approx([2.0, 3.0])  # cat (2 + 2) / 2, dog (4 + 2) / 2
    assert table["top1"].tolist() == pytest.approx([100.0, 50.0])
    rates = stats.class_block_rates(frame)
    assert rates.index.tolist() == ["cat", "dog"] and rates.columns.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(rates.to_numpy(), [[1.0, 0.5, 0.5, 0.0], [1.0, 1.0, 0.5, 0.5]])


def test_top1_by_depth(frame: pd.DataFrame) -> None:
    table = stats.top1_by_depth(frame)
    assert table.index.tolist() == [2, 4]
    assert table["images"].tolist() == [3, 1]
    assert table["share"].tolist() == pytest.approx([0.75, 0.25])
    assert table["top1"].tolist() == pytest.approx([100.0, 0.0])
    assert table["mean_confidence"].tolist() == pytest.approx([(0.9 + 0.7 + 0.8) / 3, 0.5])


def test_difficulty_rank_correlation(frame: pd.DataFrame) -> None:
    # difficulty 0.1, 1.0, 0.5, 0.3 -> ranks 1, 4, 3, 2; depth 2, 4, 2, 2 -> ranks 2, 4, 2, 2 (ties share 2).
    # Deviations from 2.5: (-1.5, 1.5, 0.5, -0.5) and (-0.5, 1.5, -0.5, -0.5): r = 3 / sqrt(5 * 3).
    assert stats.difficulty_corr(frame) == pytest.approx(3 / math.sqrt(15))
    assert math.isnan(stats.difficulty_corr(frame.assign(difficulty=np.float32("nan"))))


def test_spearman() -> None:
    assert stats.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)  # ranks (1,2,3) vs (3,1,2)
    assert stats.spearman([1, 2, float("nan"), 3], [1, 2, 5, 3]) == pytest.approx(1.0)  # NaN pairs dropped
    assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(stats.spearman([1], [2]))


def test_depth_by_difficulty(frame: pd.DataFrame) -> None:
    table = stats.depth_by_difficulty(frame, bins=2)
    assert [(iv.left, iv.right) for iv in table.index] == [(0.0, 0.5), (0.5, 1.0)]
    assert table["images"].tolist() == [2, 2]  # 0.1, 0.3 | 0.5 (left-closed), 1.0 (joins the last bin)
    assert table["mean_depth"].tolist() == pytest.approx([2.0, 3.0])
    assert table["top1"].tolist() == pytest.approx([100.0, 50.0])
    five = stats.depth_by_difficulty(frame)
    assert five["images"].tolist() == [1, 1, 1, 0, 1] and math.isnan(five["top1"].iloc[3])
    assert len(stats.depth_by_difficulty(frame.assign(difficulty=np.float32("nan")))) == 0
    with pytest.raises(ValueError, match="bins"):
        stats.depth_by_difficulty(frame, bins=0)


def test_coexecution(frame: pd.DataFrame) -> None:
    # images running both i and j: (0,0)=4 (0,1)=3 (0,2)=2 (0,3)=1 (1,1)=3 (1,2)=1 (1,3)=1 (2,2)=2 (2,3)=1 (3,3)=1
    both = np.array([[4, 3, 2, 1], [3, 3, 1, 1], [2, 1, 2, 1], [1, 1, 1, 1]], dtype=float)
    np.testing.assert_allclose(stats.coexecution(frame).to_numpy(), both / 4)
    np.testing.assert_allclose(stats.coexecution(frame, "row").to_numpy(), both / np.array([[4], [3], [2], [1]]))
    never = frame.assign(executed=frame["executed"] & (frame["block"] != 3))
    never = never.assign(executed_blocks=never.groupby("image_index")["executed"].transform("sum").astype("int16"))
    row = stats.coexecution(never, "row")
    assert row.loc[3].isna().all() and row.loc[0, 3] == 0.0
    with pytest.raises(ValueError, match="normalize"):
        stats.coexecution(frame, "all")  # type: ignore[arg-type]


def test_common_paths(frame: pd.DataFrame) -> None:
    table = stats.common_paths(frame)
    assert table["path"].tolist() == ["1100", "1010", "1111"]  # 1010 and 1111 tie at one image: by path
    assert table["images"].tolist() == [2, 1, 1]
    assert table["share"].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert table["executed_blocks"].tolist() == [2, 2, 4]
    assert table["top1"].tolist() == pytest.approx([100.0, 100.0, 0.0])
    assert table["mean_confidence"].tolist() == pytest.approx([0.85, 0.7, 0.5])
    assert stats.common_paths(frame, top=1)["path"].tolist() == ["1100"]


def test_pareto_front() -> None:
    points = pd.DataFrame({
        "name": ["A", "B", "C", "D", "E", "F", "G"],
        "executed_blocks": [2.0, 3.0, 3.0, 4.0, 1.0, 2.0, float("nan")],
        "top1": [80.0, 85.0, 82.0, 85.0, 70.0, 80.0, 99.0],
    })  # fmt: skip
    # C (3, 82) and D (4, 85) are dominated by B (3, 85); A and F are equal and both kept; G has no x.
    front = stats.pareto_front(points, "executed_blocks", "top1")
    assert front["name"].tolist() == ["E", "A", "F", "B"]
    errors = points.assign(error=100 - points["top1"])
    assert stats.pareto_front(errors, "executed_blocks", "error", y_better="lower")["name"].tolist() == ["E", "A", "F", "B"]
    # The mirror image (more x, less y is better): only B (3, 85) is dominated, by C (3, 82) and by D (4, 85).
    mirror = stats.pareto_front(points, "executed_blocks", "top1", x_better="higher", y_better="lower")
    assert mirror["name"].tolist() == ["E", "A", "F", "C", "D"]
    with pytest.raises(ValueError, match=r"no column 'speed'"):
        stats.pareto_front(points, "speed", "top1")
    with pytest.raises(ValueError, match=r"'lower' or 'higher'"):
        stats.pareto_front(points, "executed_blocks", "top1", x_better="less")  # type: ignore[arg-type]
