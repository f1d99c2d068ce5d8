"""The plane's analysis on a hand-made frame: the measured front, equal-top-1 ratios, dominance, goals, the table."""

from __future__ import annotations

import math

import pandas as pd

from analysis.plane import dominance, equal_top1, goals, markdown, on_front

#: name, family, vitskip, top-1, images/s (batch 256; static = 1000 img/s)
POINTS = [
    ("static", "static", False, 90.0, 1000.0),
    ("subset 2", "static subset", False, 89.0, 2600.0),
    ("ToMe r=2", "token merging (ToMe)", False, 89.8, 1200.0),
    ("exit 0.9", "threshold exit (LGViT heads)", False, 89.9, 1300.0),
    ("policy", "vitskip: RL skip", True, 89.6, 2100.0),
    ("policy slow", "vitskip: RL skip", True, 89.95, 1250.0),
]


def _frame(batches: tuple[int, ...] = (1, 256)) -> pd.DataFrame:
    rows = [
        {"name": n, "family": f, "vitskip": v, "top1": t, "images_per_s": s / (10 if b == 1 else 1), "batch": b,
         "speedup": s / 1000, "setting": n, "training": "none", "blocks": 8.0, "gflops": 1.0, "flops_ratio": 1.0}
        for b in batches for n, f, v, t, s in POINTS
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_front_equal_top1_dominance_and_goals() -> None:
    frame = _frame()
    front = frame[on_front(frame) & (frame["batch"] == 256)]["name"].tolist()
    assert sorted(front) == ["exit 0.9", "policy", "policy slow", "static", "subset 2"]  # ToMe is dominated by exit 0.9
    t = equal_top1(frame, 256, 90.0, levels=(0.0, 0.25, 0.5, 1.0)).set_index("max_loss")
    assert pd.isna(t.loc[0.0, "vitskip"]) and t.loc[0.0, "other"] == "static"  # nothing vitskip reaches 90.0
    assert t.loc[0.25, "vitskip"] == "policy slow" and t.loc[0.25, "other"] == "exit 0.9"
    assert math.isclose(t.loc[0.5, "ratio"], 2100 / 1300) and t.loc[1.0, "other"] == "subset 2"
    d = dominance(frame, 256).set_index("name")
    assert d.loc["ToMe r=2", "vitskip"] == "policy slow" and d.loc["ToMe r=2", "dominated"]
    assert not d.loc["exit 0.9", "dominated"] and math.isclose(d.loc["exit 0.9", "ratio"], 1250 / 1300)
    g = goals(frame, 90.0)
    assert g["speedup_b256"]["best"] == "policy" and g["speedup_b256"]["met"]  # 2.1x within 0.5 pt
    assert g["dominates_b256"] == {"points": 2, "dominated": 1, "met": False}
    md = markdown(frame, {"title": "t", "intro": "i", "command": "c", "static_top1": 90.0, "static_name": "static"})
    assert "| 89.50 | policy | 2,100 | exit 0.9 | 1,300 | 1.62x |" in md
    assert "- batch 256: a vitskip point faster" in md and "**missed** (1 of 2)" in md
