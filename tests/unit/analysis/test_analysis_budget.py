"""``analysis.budget``: the conditioned curve against separately trained policies at equal executed blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import budget


def fake_run(root: Path, name: str, seed: int, *, curve: list[tuple[float, float, float]] | None = None,
             weight: float | None = None, top1: float = 0.0, blocks: float = 0.0) -> Path:  # fmt: skip
    d = root / name
    d.mkdir()
    s = {"seed": seed, "depth": 8, "top1_dynamic": top1, "executed_blocks": blocks}
    if curve is not None:
        s["budget_curve"] = [{"compute_weight": w, "top1": t, "executed_blocks": b} for w, t, b in curve]
    (d / "summary.json").write_text(json.dumps(s))
    (d / "args.yaml").write_text(yaml.safe_dump({"compute_weight": weight, "seed": seed}))
    return d


def test_gap_is_taken_at_the_separate_policys_blocks(tmp_path: Path) -> None:
    cond = [fake_run(tmp_path, f"c{s}", s, curve=[(1.0, 80.0, 1.0), (0.1, 88.0, 3.0), (0.01, 90.0, 5.0)]) for s in (1, 2)]
    sep = [
        fake_run(tmp_path, "s1", 1, weight=0.1, top1=87.5, blocks=2.0),  # curve at 2 blocks: 84.0 -> gap -3.5
        fake_run(tmp_path, "s2", 2, weight=0.03, top1=88.5, blocks=4.0),  # curve at 4 blocks: 89.0 -> gap +0.5
        fake_run(tmp_path, "s3", 1, weight=0.001, top1=91.0, blocks=7.0),  # beyond the curve's span
    ]
    pairs = budget.compare(pd.concat([budget.curve_frame(d) for d in cond]), budget.separate_frame(sep))
    matched = pairs[pairs["same_seed"]].set_index("compute_weight")
    assert matched.loc[0.1, "gap"] == pytest.approx(-3.5) and matched.loc[0.03, "gap"] == pytest.approx(0.5)
    assert pd.isna(matched.loc[0.001, "gap"])
    md = budget.write(cond, sep, tmp_path / "out").read_text()
    assert "| 0.1 | 0.250 | 87.50 | 84.00 | -3.50 |" in md and "outside the conditioned curve's span" in md
    assert (tmp_path / "out" / "budget.png").is_file()


def test_wrong_kinds_of_runs_are_clear_errors(tmp_path: Path) -> None:
    plain = fake_run(tmp_path, "p", 1, weight=0.1, top1=80.0, blocks=2.0)
    cond = fake_run(tmp_path, "c", 1, curve=[(0.1, 80.0, 2.0)])
    with pytest.raises(ValueError, match="--budget-range"):
        budget.curve_frame(plain)
    with pytest.raises(ValueError, match="--conditioned"):
        budget.separate_frame([cond])
    assert budget.main(["--conditioned", str(plain), "--separate", str(cond), "--out", str(tmp_path / "o")]) == 2
