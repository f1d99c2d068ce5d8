"""REINFORCE: returns-to-go by hand, the sign of the learning signal, both autoreset modes, learning, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.evaluation import evaluate_policy

from agents import SB3VecEnv
from agents.reinforce import Reinforce, discounted_returns
from vitskip_env import ViTSkipVectorEnv
from vitskip_env.env import EnvOptions

ID = "ViTSkip-Shapes-v0"
N, DEPTH = 4, 4


def test_returns_to_go_by_hand() -> None:
    rewards = np.array([[1, 1], [2, 1], [3, 1], [4, 1], [5, 1]], dtype=np.float64)  # (steps, envs)
    dones = np.array([[0, 1], [0, 0], [1, 1], [0, 0], [0, 1]], dtype=bool)
    returns, complete = discounted_returns(rewards, dones, 1.0)
    # env 0: episode over steps 0-2 (6, 5, 3); steps 3-4 never end -> unknown. env 1: episodes 0 | 1-2 | 3-4.
    np.testing.assert_allclose(returns[:3, 0], [6, 5, 3])
    np.testing.assert_array_equal(complete[:, 0], [True, True, True, False, False])
    np.testing.assert_allclose(returns[:, 1], [1, 2, 1, 2, 1])
    assert complete[:, 1].all()
    half, _ = discounted_returns(rewards, dones, 0.5)
    np.testing.assert_allclose(half[:3, 0], [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])
    np.testing.assert_allclose(half[:, 1], [1, 1.5, 1, 1.5, 1])


def probe(agent: Reinforce, obs: np.ndarray) -> np.ndarray:
    """Probability of executing, per observation."""
    with torch.no_grad():
        return torch.softmax(agent.policy(agent._tensor(obs)), 1)[:, 1].numpy()


def episode_obs(micro_kwargs: dict, n: int = N, **kwargs: Any) -> np.ndarray:
    """One episode's observations of every block (executing everything): ``(depth * n, obs_dim)``."""
    venv = ViTSkipVectorEnv(n, **{**micro_kwargs, **kwargs})
    rows = [venv.reset(seed=7)[0]] + [venv.step(np.ones(n, dtype=np.int64))[0] for _ in range(DEPTH - 1)]
    return np.concatenate(rows)


def test_early_blocks_are_reinforced_like_late_ones(micro_kwargs: dict) -> None:
    """Each block pays 0.1 and the answer earns 1: G = [0.6, 0.7, 0.8, 0.9] for the four blocks.

    Standardising these returns within the episode would give block 0 a negative advantage (and
    a constant return, e.g. [1, 1, 1, 1], none at all); the correct update raises the probability
    of the actions taken at every block, including the first.
    """
    torch.manual_seed(0)
    agent = Reinforce(
        gym.make_vec(ID, num_envs=1, **micro_kwargs), ent_coef=0.0, normalize_advantage=False, learning_rate=1e-2
    )
    obs = episode_obs(micro_kwargs, n=1)
    before = probe(agent, obs)
    for returns in ([0.6, 0.7, 0.8, 0.9], [1.0, 1.0, 1.0, 1.0]):
        agent._update(
            agent._tensor(obs), torch.ones(DEPTH, dtype=torch.long), torch.tensor(returns), torch.arange(DEPTH), torch.zeros(0)
        )
        after = probe(agent, obs)
        assert (after > before).all(), (before, after)
        before = after
    assert (agent.baseline[:DEPTH] > 0).all() and (agent.baseline[DEPTH:] == 0).all()  # per-block baseline moves up


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_rollouts_hold_whole_episodes_in_both_autoreset_modes(micro_kwargs: dict, mode: AutoresetMode) -> None:
    venv = ViTSkipVectorEnv(N, autoreset_mode=mode, **micro_kwargs)
    agent = Reinforce(venv, n_steps=2 * (DEPTH + 1), seed=0)  # NEXT_STEP: 2 episodes + 2 reset steps; SAME_STEP: 2.5
    batches: list[tuple] = []
    agent._update = lambda *batch: batches.append(batch) or {}  # type: ignore[method-assign]
    agent.learn(2 * (DEPTH + 1) * N)
    _, actions, returns, t, episode_returns = batches[0]
    assert returns.shape == (2 * DEPTH * N,) and episode_returns.shape == (2 * N,)
    t, returns, actions = t.view(-1, N), returns.view(-1, N), actions.view(-1, N).float()
    assert t[:, 0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    cost = EnvOptions().compute_weight * 0.25  # default compute_weight x the micro backbone's equal block shares
    for first in (0, DEPTH):
        steps = slice(first, first + DEPTH - 1)
        torch.testing.assert_close(returns[steps] - returns[first + 1 : first + DEPTH], -cost * actions[steps])
        last = returns[first + DEPTH - 1] + cost * actions[first + DEPTH - 1]  # the answer: 0 or 1
        assert ((last.abs() < 1e-5) | ((last - 1).abs() < 1e-5)).all()
        torch.testing.assert_close(returns[first], episode_returns.view(-1, N)[first // DEPTH])


def test_learns_to_skip_when_compute_is_expensive(micro_kwargs: dict) -> None:
    obs = episode_obs(micro_kwargs)
    agent = Reinforce(gym.make_vec(ID, num_envs=8, compute_weight=10.0, **micro_kwargs), n_steps=8, seed=0, learning_rate=3e-3)
    before = probe(agent, obs).mean()
    agent.learn(1024)
    after = probe(agent, obs).mean()
    assert abs(before - 0.5) < 0.1 and after < 0.3, (before, after)
    assert (agent.baseline[:DEPTH] < 0).all()  # expected returns are negative once compute costs this much


def test_predict_works_with_sb3_evaluate_policy(micro_kwargs: dict) -> None:
    env = SB3VecEnv(N, **micro_kwargs)
    agent = Reinforce(env.vector_env, seed=0)
    obs = env.reset()
    actions, state = agent.predict(obs, deterministic=True)
    assert actions.shape == (N,) and actions.dtype == np.int64 and state is None
    single, _ = agent.predict(obs[0], deterministic=True)
    assert np.ndim(single) == 0 and single == actions[0]
    rewards, lengths = evaluate_policy(agent, env, n_eval_episodes=8, return_episode_rewards=True, warn=False)
    assert len(rewards) == 8 and set(lengths) == {DEPTH}


def test_generic_gymnasium_vector_env_and_bad_action_space() -> None:
    agent = Reinforce(gym.make_vec("CartPole-v1", num_envs=2), n_steps=64, seed=0)  # not a ViTSkip space: an MLP
    agent.learn(256)
    assert agent.num_timesteps == 256
    with pytest.raises(TypeError, match="Discrete"):
        Reinforce(gym.make_vec("Pendulum-v1", num_envs=2))


@pytest.mark.filterwarnings("ignore:rich is experimental")  # SB3's progress bar
@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
def test_save_load_roundtrip(micro_kwargs: dict, tmp_path: Path, obs_mode: str) -> None:
    kwargs = {**micro_kwargs, "obs_mode": obs_mode}
    agent = Reinforce(gym.make_vec(ID, num_envs=N, **kwargs), n_steps=8, seed=0, ent_coef=0.05)
    agent.learn(64)
    agent.save(tmp_path / "policy.pt")
    loaded = Reinforce.load(tmp_path / "policy.pt")  # no env: predict only
    obs = ViTSkipVectorEnv(N, **kwargs).reset(seed=1)[0]
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0])
    assert loaded.config == agent.config and loaded.num_timesteps == 64
    torch.testing.assert_close(loaded.baseline, agent.baseline)
    with pytest.raises(RuntimeError, match="no env"):
        loaded.learn(8)
    resumed = Reinforce.load(tmp_path / "policy.pt", env=gym.make_vec(ID, num_envs=N, **kwargs))
    resumed.learn(32, reset_num_timesteps=False, progress_bar=True)
    assert resumed.num_timesteps == 96
