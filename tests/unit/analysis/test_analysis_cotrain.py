"""``analysis.cotrain``: several train/joint.py runs (seeds) summarised, mean and spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis import cotrain


def fake_joint(root: Path, seed: int, top1: float, full: float, margin: float) -> Path:
    d = root / f"run{seed}"
    d.mkdir()
    b256 = {"speedup": 2.0 + seed / 10, "static_ft_front_top1": top1 - margin, "margin": margin, "how": "interpolated"}
    target = {"top1": top1, "executed_blocks": 2.0, "executed_frac": 0.25, "minus_full_finetuned": top1 - full, "b256": b256}
    table = [
        {"name": "static", "family": "static", "top1": 89.0, "executed_blocks": 8.0},
        {"name": "static, fine-tuned", "family": "static, fine-tuned", "top1": full, "executed_blocks": 8.0},
        {"name": "subset, fine-tuned", "family": "static, fine-tuned", "top1": 87.0, "executed_blocks": 1.0},
        {"name": "subset, fine-tuned", "family": "static, fine-tuned", "top1": 88.0, "executed_blocks": 3.0},
    ]
    j = {"env": "ViTSkip-Shapes-v0", "seed": seed, "rows": table, "targets": {"policy, co-trained": target}}
    (d / "joint.json").write_text(json.dumps(j))
    return d


def test_mean_and_spread_over_seeds(tmp_path: Path) -> None:
    runs = [fake_joint(tmp_path, 1, 89.0, 89.5, 0.4), fake_joint(tmp_path, 2, 90.0, 89.5, 1.0)]
    frame = cotrain.rows(runs)
    agg = cotrain.aggregate(frame).iloc[0]
    assert agg["top1"] == pytest.approx(89.5) and agg["top1_spread"] == pytest.approx(0.5)
    assert agg["b256_margin"] == pytest.approx(0.7) and agg["b256_margin_spread"] == pytest.approx(0.3)
    assert agg["minus_full_finetuned"] == pytest.approx(0.0) and agg["seeds"] == 2
    # at 2 blocks the fine-tuned static front is halfway between its 1- and 3-block points: 87.5
    assert frame["equal_blocks_front_top1"].tolist() == pytest.approx([87.5, 87.5])
    assert agg["equal_blocks_margin"] == pytest.approx(2.0)
    md = cotrain.write(runs, tmp_path / "out").read_text()
    assert "| ViTSkip-Shapes-v0 | policy, co-trained | 2 | 89.50 +- 0.50 |" in md and "+0.70 +- 0.30" in md


def test_a_directory_without_joint_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train/joint\.py"):
        cotrain.read_joint(tmp_path)
    assert cotrain.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
