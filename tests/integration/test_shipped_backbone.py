"""The shipped demo backbone: found by default, accurate on shapes, and robust to random block skipping."""

from __future__ import annotations

import gymnasium as gym
import pytest

import vitskip_env  # noqa: F401
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
