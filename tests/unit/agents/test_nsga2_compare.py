"""The dynamic-vs-static comparison: val-chosen static subsets, rounding and interpolation, the verdict."""

from __future__ import annotations

import pandas as pd
import pytest

from agents.nsga2.compare import compare_dynamic_static, comparison_markdown, static_envelope

FRONT = pd.DataFrame({
    "kept": ["1000", "1100", "1010", "1110", "1111"],
    "kept_blocks": [1, 2, 2, 3, 4],
    "top1": [60.0, 80.0, 81.0, 88.0, 90.0],  # val: 1010 wins at 2 blocks
    "top1_test": [59.0, 82.0, 79.0, 87.0, 89.0],  # ... although 1100 is better on test: test never picks
})  # fmt: skip


def test_envelope_picks_each_size_on_val() -> None:
    env = static_envelope(FRONT, 4)
    assert env["kept"].tolist() == ["1000", "1010", "1110", "1111"]
    assert env["top1_test"].tolist() == [59.0, 79.0, 87.0, 89.0]


def test_equal_blocks_rounded_and_interpolated() -> None:
    r = compare_dynamic_static(FRONT, {"executed_blocks": 2.25, "top1_test": 85.0, "top1": 86.0}, 4)
    assert r["rounded_k"] == 2 and r["rounded_top1_test"] == 79.0
    assert r["interpolated_top1_test"] == pytest.approx(79.0 + 0.25 * (87.0 - 79.0))
    assert r["gain_interpolated"] == pytest.approx(85.0 - 81.0)
    assert r["static_blocks_to_match"] == 3
    text = comparison_markdown(r, title="t")
    assert "beats the best static subset of equal size by 4.00 points" in text and "needs 3 blocks" in text
    tuned = FRONT.assign(top1_test=FRONT["top1_test"] + 5)
    ft = compare_dynamic_static(tuned, {"executed_blocks": 2.25, "top1_test": 85.0}, 4)
    text = comparison_markdown(r, title="t", finetuned=ft, finetune_note="subsets fine-tuned for 9 steps")
    assert "does not beat the best of the subsets fine-tuned for 9 steps of equal size (-1.00 points)" in text


def test_a_policy_below_the_static_front_is_reported_as_such() -> None:
    r = compare_dynamic_static(FRONT, {"executed_blocks": 3.0, "top1_test": 86.0}, 4)
    assert r["gain_interpolated"] == pytest.approx(-1.0)
    assert "does not beat" in comparison_markdown(r, title="t")
    with pytest.raises(ValueError, match="top1_test"):
        static_envelope(FRONT.drop(columns="top1_test"), 4)
