"""The shipped demo backbones: found by default, accurate, robust to random block skipping, and (on
relations) needing their depth, as their records say."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import vitskip_env  # noqa: F401
from agents.nsga2 import evaluate_subsets, str_to_mask
from vitskip_env import load_backbone, make_dataset
from vitskip_env.measure import evaluate_backbone, random_skip_top1
from vitskip_env.model.presets import ASSETS_DIR, find_backbone


def test_default_env_uses_the_shipped_backbone_offline() -> None:
    path = find_backbone("demo", "shapes")
    assert path == ASSETS_DIR / "demo-shapes.safetensors"  # VITSKIP_HOME is an empty tmp folder in tests
    env = gym.make("ViTSkip-Shapes-v0", split="test")
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.backbone.depth == 8 and obs.shape == env.observation_space.shape


def test_shipped_backbone_is_accurate_and_skip_robust() -> None:
    vit = load_backbone(find_backbone("demo", "shapes"), num_classes=10)
    ds = make_dataset("shapes", "test")
    full = evaluate_backbone(vit, ds, limit=2000)["top1"]
    half = random_skip_top1(vit, ds, 0.5, seed=0, limit=2000)
    assert full >= 85.0, full
    assert half >= full - 4.0, (full, half)  # 50% of blocks skipped at random costs only a few points
    assert vit.meta["training"]["args"]["block_drop"] > 0


@pytest.mark.parametrize("skip", [0.25, 0.5])
def test_more_skipping_costs_accuracy_monotonically(skip: float) -> None:
    vit = load_backbone(find_backbone("demo", "shapes"))
    ds = make_dataset("shapes", "test")
    assert random_skip_top1(vit, ds, 1.0, limit=500) < random_skip_top1(vit, ds, skip, limit=500)


# --------------------------------------------------------------------------------- relations, pointers
#: The relational tasks' shipped backbones: env id, classes, depth record beside the weights.
RELATIONAL = {"relations": ("ViTSkip-Relations-v0", 36), "pointers": ("ViTSkip-Pointers-v0", 16)}


@pytest.mark.parametrize("dataset", sorted(RELATIONAL))
def test_relational_env_uses_its_shipped_backbone_offline(dataset: str) -> None:
    env_id, classes = RELATIONAL[dataset]
    assert find_backbone("demo", dataset) == ASSETS_DIR / f"demo-{dataset}.safetensors"
    env = gym.make(env_id, split="val")
    obs, _ = env.reset(seed=0)
    vit = env.unwrapped.backbone
    assert vit.depth == 8 and vit.meta["training"]["args"]["block_drop"] > 0 and obs.shape == env.observation_space.shape
    assert env.unwrapped.dataset.num_classes == classes


@pytest.mark.slow  # re-scores two shipped records on full 10,000-image splits (~1 min): `uv run pytest -m slow`
@pytest.mark.parametrize("dataset", sorted(RELATIONAL))
def test_relational_depth_record_is_true(dataset: str) -> None:
    """The shipped depth curve re-scores exactly: each depth's subset, the full model, the hardest bin."""
    record = json.loads((ASSETS_DIR / f"demo-{dataset}.depth.json").read_text())
    rows = record["rows"]
    vit = load_backbone(find_backbone("demo", dataset), num_classes=RELATIONAL[dataset][1])
    test = make_dataset(dataset, "test")
    assert record["test_images"] == len(test) and record["depth"] == vit.depth == len(rows)
    masks = np.stack([str_to_mask(r["kept"]) for r in rows])
    assert [int(m.sum()) for m in masks] == list(range(1, vit.depth + 1))
    top1 = evaluate_subsets(vit, masks, test.images, test.labels, dataset=test)["top1"]
    assert top1.tolist() == pytest.approx([r["raw top1"] for r in rows], abs=0.05)
    assert evaluate_backbone(vit, test)["top1"] == pytest.approx(rows[-1]["raw top1"], abs=0.05)
    hardest = test.difficulty >= 0.75
    top1_hard = evaluate_subsets(vit, masks, test.images[hardest], test.labels[hardest], dataset=test)["top1"]
    assert top1_hard.tolist() == pytest.approx([r["raw bin 0.75-1.00"] for r in rows], abs=0.05)
