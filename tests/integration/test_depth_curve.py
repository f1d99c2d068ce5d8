"""train/depth_curve.py on a micro backbone: exhaustive, selected on val, scored on test, bins that add up."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.nsga2 import evaluate_subsets, str_to_mask
from vitskip_env import SkippableViT, make_dataset
from vitskip_env.measure import evaluate_backbone

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "train"))

import depth_curve  # noqa: E402


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("depth")
    vit = SkippableViT("micro", num_classes=10)
    path = vit.save(folder / "micro.safetensors", dataset="shapes")
    args = depth_curve.Args(dataset="shapes", backbone=str(path), finetune_steps=3, val_images=96, test_images=300, threads=1)
    return depth_curve.main(args), path, folder


def test_every_subset_is_scored_and_the_best_on_val_is_kept(record: tuple[dict, Path, Path]) -> None:
    rec, path, _ = record
    from vitskip_env import load_backbone

    vit = load_backbone(path)
    val = make_dataset("shapes", "val")
    assert rec["subsets_scored"] == 15 and [r["blocks"] for r in rec["rows"]] == [1, 2, 3, 4]
    masks = depth_curve.all_subsets(4)
    top1 = evaluate_subsets(vit, masks, val.images[:96], val.labels[:96], dataset=val)["top1"].numpy()
    for row in rec["rows"]:
        mask = str_to_mask(row["kept"])
        assert mask.sum() == row["blocks"]
        assert row["val_top1"] == pytest.approx(top1[masks.sum(1) == row["blocks"]].max())


def test_test_scores_agree_with_the_one_scorer_and_bins_add_up(record: tuple[dict, Path, Path]) -> None:
    rec, path, _ = record
    from vitskip_env import load_backbone

    test = make_dataset("shapes", "test")
    full = rec["rows"][-1]
    assert full["raw top1"] == pytest.approx(evaluate_backbone(load_backbone(path), test, limit=300)["top1"])
    diff = test.difficulty[:300]
    bins = depth_curve.bin_labels(diff)
    assert sum(idx.numel() for _, idx in bins) == 300  # every image in exactly one bin
    for row in rec["rows"]:
        for prefix in ("raw", "ft"):
            weighted = sum(row[f"{prefix} bin {name}"] * idx.numel() for name, idx in bins if idx.numel()) / 300
            assert weighted == pytest.approx(row[f"{prefix} top1"], abs=1e-6)
    assert any(r["ft top1"] != r["raw top1"] for r in rec["rows"])  # the fine-tune trained something


def test_files_written_and_summary_compares_full_with_half_depth(record: tuple[dict, Path, Path]) -> None:
    rec, _, folder = record
    saved = json.loads((folder / "micro.depth.json").read_text())
    assert saved["rows"] == rec["rows"]
    assert "| blocks | kept |" in (folder / "micro.depth.md").read_text()
    s = rec["summary"]
    assert s["full_top1"] == rec["rows"][3]["ft top1"] and s["half_depth_top1"] == rec["rows"][1]["ft top1"]
    assert s["gap_full_minus_half"] == pytest.approx(s["full_top1"] - s["half_depth_top1"], abs=0.01)


def test_too_deep_for_an_exhaustive_search_says_what_to_use() -> None:
    assert depth_curve.all_subsets(3).shape == (7, 3) and not np.any(depth_curve.all_subsets(3).sum(1) == 0)
    with pytest.raises(ValueError, match=r"nsga2\.py --search layers"):
        depth_curve.all_subsets(13)
