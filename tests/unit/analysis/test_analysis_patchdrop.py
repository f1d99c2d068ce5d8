"""Time to the full-patch top-1 and the patch-dropping goals on a hand-made run."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis import patchdrop


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    curves = {  # contender: (training seconds, val top-1)
        "full": ([0, 10, 20], [0.1, 0.3, 0.5]),
        "learned": ([0, 5, 12], [0.1, 0.495, 0.6]),
        "random": ([0, 15, 20], [0.1, 0.45, 0.52]),
    }
    steps = pd.concat(
        [pd.DataFrame({"contender": k, "seed": 0, "used": u, "val_top1": t}) for k, (u, t) in curves.items()],
        ignore_index=True,
    )
    runs = pd.DataFrame(
        {"contender": list(curves), "seed": 0, "val_top1": [0.5, 0.6, 0.52], "seconds_per_epoch": [60.0, 30.0, 45.0]}
    )
    return runs, steps


def test_time_to_the_full_patch_top1_is_read_off_each_curve() -> None:
    runs, steps = _frames()
    frame = patchdrop.per_run(runs, steps).set_index("contender")
    # the target is the full run's last curve point minus 1 pt: 0.49
    assert frame.loc["learned", "time_to_full"] == 5 and frame.loc["learned", "time_to_full_share"] == pytest.approx(0.25)
    assert frame.loc["random", "time_to_full"] == 20 and frame.loc["full", "time_to_full_share"] == 1.0
    assert frame["epoch_time_vs_full"].tolist() == [1.0, 0.5, 0.75]
    assert math.isnan(patchdrop.time_to(steps[steps["contender"] == "random"], 0.9))  # never reached


def test_goals_and_table_state_what_was_met() -> None:
    runs, steps = _frames()
    frame = patchdrop.per_run(runs, steps)
    facts = patchdrop.goals(frame)
    assert facts["reaches_full_within_share"] and facts["beats_random_top1"] and facts["beats_random_time"]
    assert facts["val_top1_minus_random"] == {0: pytest.approx(0.08)}
    slow = frame.assign(time_to_full_share=frame["time_to_full_share"].where(frame["contender"] != "learned", 0.8))
    assert not patchdrop.goals(slow)["reaches_full_within_share"]
