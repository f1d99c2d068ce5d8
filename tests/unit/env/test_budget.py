"""Budget-conditioned episodes (``compute_weight_range``): per-episode compute weight, its observation entry, checkers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import SyncVectorEnv
from same_outputs import assert_same
from stable_baselines3.common.env_checker import check_env as sb3_check

import vitskip_env  # noqa: F401  (registers the ids)
from vitskip_env import ViTSkipVectorEnv
from vitskip_env.observations import budget_feature

ID = "ViTSkip-Shapes-v0"
RANGE = (0.01, 1.0)


@pytest.fixture
def budget_kwargs(micro_kwargs: dict) -> dict:
    return {**micro_kwargs, "compute_weight_range": RANGE}


def run_episode(env: gym.Env, action: int, **reset_kw) -> tuple[np.ndarray, float, dict]:
    obs, _ = env.reset(**reset_kw)
    first, total, done = obs, 0.0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        done = terminated or truncated
    return first, total, info


@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
def test_checkers_pass(budget_kwargs: dict, obs_mode: str) -> None:
    env = gym.make(ID, **{**budget_kwargs, "obs_mode": obs_mode})
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check(gym.make(ID, **{**budget_kwargs, "obs_mode": obs_mode}).unwrapped, warn=False)


def test_each_episode_pays_its_own_compute_weight(budget_kwargs: dict) -> None:
    env = gym.make(ID, **budget_kwargs)
    costs = env.unwrapped.core.costs.numpy()
    weights = set()
    for seed in range(4):
        first, total, info = run_episode(env, 1, seed=seed)
        w = info["compute_weight"]
        assert RANGE[0] <= w <= RANGE[1]
        # the budget entry (after executed_frac) is the weight's log-scale position
        assert first[-1] == pytest.approx(budget_feature(w, RANGE), abs=1e-6)
        assert total == pytest.approx(float(info["correct"]) - w * costs.sum(), abs=1e-5)
        weights.add(round(w, 6))
    assert len(weights) == 4  # drawn per episode
    first, total, info = run_episode(env, 1, options={"compute_weight": 0.5})
    assert info["compute_weight"] == pytest.approx(0.5) and first[-1] == pytest.approx(budget_feature(0.5, RANGE))


def test_native_equals_sync(budget_kwargs: dict) -> None:
    n = 3
    native = gym.make_vec(ID, num_envs=n, **budget_kwargs)
    sync = gym.make_vec(ID, num_envs=n, vectorization_mode="sync", **budget_kwargs)
    assert isinstance(native, ViTSkipVectorEnv) and isinstance(sync, SyncVectorEnv)
    assert_same(native.reset(seed=5), sync.reset(seed=5), ordered=False)
    rng = np.random.default_rng(0)
    for _ in range(10):  # crosses autoresets: new weights drawn per row, as each single env draws its own
        actions = rng.integers(0, 2, size=n)
        assert_same(native.step(actions), sync.step(actions), ordered=False)


def test_pinned_weight_holds_until_the_next_reset(budget_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(2, **budget_kwargs)
    obs, _ = venv.reset(seed=0, options={"compute_weight": 0.1})
    for _ in range(2 * venv.core.depth):  # two episodes, the second after an autoreset
        obs, *_ = venv.step(np.ones(2, dtype=np.int64))
        assert np.allclose(obs[:, -1], budget_feature(0.1, RANGE))
    obs, _ = venv.reset(seed=0)
    assert not np.allclose(obs[:, -1], budget_feature(0.1, RANGE))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"compute_weight_range": (1.0, 0.5)}, "0 < lo < hi"),
        ({"compute_weight_range": (0.0, 0.5)}, "0 < lo < hi"),
        ({"compute_weight_range": ("a", 1.0)}, "two compute weights"),
        ({"compute_weight_range": (0.1, 1.0), "actions": "skip_exit", "exits": "linear"}, "actions='skip'"),
    ],
)
def test_bad_ranges_are_clear_errors(micro_kwargs: dict, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gym.make(ID, **{**micro_kwargs, **kwargs})


def test_pinned_weight_outside_the_range_or_without_a_range(budget_kwargs: dict, micro_kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"compute_weight_range \[0.01, 1.0\]"):
        gym.make(ID, **budget_kwargs).reset(options={"compute_weight": 2.0})
    with pytest.raises(ValueError, match="budget-conditioned"):
        ViTSkipVectorEnv(2, **micro_kwargs).reset(options={"compute_weight": 0.1})
