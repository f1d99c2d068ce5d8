"""Agents: every algorithm trains on tiny envs, learning moves the policy the way the reward says, custom classes plug in."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecMonitor

from agents import ALGOS, SB3VecEnv, algo_defaults, evaluate_agent, make_agent, resolve_algo
from agents.reinforce import Reinforce
from vitskip_env import ENV_IDS

N = 8
#: A block costs compute_weight * 1/4 against at most 1 for a correct answer: skipping is clearly right.
SKIP_PAYS = 10.0


@pytest.fixture
def id_kwargs(request: pytest.FixtureRequest, micro_kwargs: dict) -> dict:
    """Keyword arguments for an id: the untrained micro backbone and, for real datasets, a miniature copy."""
    dataset = ENV_IDS[request.param]
    kwargs = {k: v for k, v in micro_kwargs.items() if k != "dataset"}
    if dataset in ("cifar10", "cifar100", "tinyimagenet"):
        fixture = {"cifar10": "mini_cifar10", "cifar100": "mini_cifar100", "tinyimagenet": "mini_tiny"}[dataset]
        kwargs["data_root"] = request.getfixturevalue(fixture)["root"]
    if dataset in ("relations", "pointers"):
        kwargs["split"] = "val"  # the smallest built-in split
    elif dataset != "shapes":
        kwargs["split"] = "train"
    return kwargs


def execute_prob(model: Any, obs: np.ndarray) -> float:
    """Mean probability of action 1 (execute) of an SB3 actor-critic policy over ``obs``."""
    obs_t, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        return float(model.policy.get_distribution(obs_t).distribution.probs[:, 1].mean())


def probe_obs(env: SB3VecEnv) -> np.ndarray:
    """Observations of every block: one episode executing everything."""
    env.seed(123)
    rows = [env.reset()] + [env.step(np.ones(env.num_envs, dtype=np.int64))[0] for _ in range(env.depth - 1)]
    return np.concatenate(rows)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "maskable_ppo"])
@pytest.mark.parametrize("id_kwargs", list(ENV_IDS), indirect=True)
def test_learns_to_skip_when_compute_is_expensive(algo: str, id_kwargs: dict, request: pytest.FixtureRequest) -> None:
    env_id = request.node.callspec.params["id_kwargs"]
    env = SB3VecEnv(N, env_id=env_id, compute_weight=SKIP_PAYS, **id_kwargs)
    obs = probe_obs(env)
    model = make_agent(algo, VecMonitor(env), seed=0, n_steps=16, learning_rate=1e-3)
    before = execute_prob(model, obs)
    model.learn(384)
    after = execute_prob(model, obs)
    assert abs(before - 0.5) < 0.05 and after < 0.3, (before, after)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "maskable_ppo"])
def test_learns_to_execute_when_executing_pays(algo: str, micro_kwargs: dict) -> None:
    env = SB3VecEnv(N, **micro_kwargs, compute_weight=-2.0)  # a negative cost: every executed block earns reward
    obs = probe_obs(env)
    model = make_agent(algo, env, seed=0, n_steps=16, learning_rate=1e-3)
    before = execute_prob(model, obs)
    model.learn(384)
    assert execute_prob(model, obs) > before + 0.2


@pytest.mark.parametrize(
    ("algo", "obs_mode"), [("recurrent_ppo", "flat"), ("trpo", "dict"), ("qrdqn", "flat"), ("ppo", "tokens")]
)
def test_other_algorithms_construct_and_run(algo: str, obs_mode: str, micro_kwargs: dict) -> None:
    env = VecMonitor(SB3VecEnv(4, **{**micro_kwargs, "obs_mode": obs_mode}))
    extra = {"learning_starts": 16, "buffer_size": 512} if algo == "qrdqn" else {"n_steps": 8}
    model = make_agent(algo, env, seed=0, **extra)
    model.learn(64)
    assert model.num_timesteps >= 64
    result = evaluate_agent(model, {**micro_kwargs, "obs_mode": obs_mode}, 10, num_envs=4)
    assert result["images"] == 10 and 0 <= result["executed_blocks"] <= 4 and len(result["block_rates"]) == 4


def test_make_agent_defaults_and_errors(micro_kwargs: dict) -> None:
    assert set(ALGOS) == {"ppo", "a2c", "maskable_ppo", "recurrent_ppo", "trpo", "qrdqn", "reinforce"}
    assert all(algo_defaults(name) for name in ALGOS)
    env = SB3VecEnv(N, **micro_kwargs)
    ppo = make_agent("ppo", env, policy_kwargs={"activation": "tanh"}, extractor_kwargs={"features_dim": 32})
    d = algo_defaults("ppo")
    assert ppo.n_steps == d["n_steps"] and ppo.batch_size == d["n_steps"] * N // d["n_minibatches"] and ppo.gamma == 1.0
    assert ppo.policy.features_extractor.features_dim == 32 and ppo.policy.net_arch == d["policy_kwargs"]["net_arch"]
    assert ppo.policy.activation_fn is torch.nn.Tanh
    assert make_agent("ppo", env, batch_size=16).batch_size == 16
    assert resolve_algo("stable_baselines3:PPO") == ("ppo", ALGOS["ppo"])
    dqn = make_agent("stable_baselines3:DQN", env)  # any SB3 algorithm gets the extractor too (no defaults)
    assert type(dqn.q_net.features_extractor).__name__ == "FlatSkipExtractor" and dqn.gamma == 0.99
    with pytest.raises(ValueError, match="Did you mean 'maskable_ppo'"):
        make_agent("mskable_ppo", env)
    with pytest.raises(ValueError, match="cannot load algorithm"):
        make_agent("stable_baselines3:NoSuchAlgo", env)
    with pytest.raises(TypeError, match="does not take"):
        make_agent("ppo", env, n_stepz=8)
    with pytest.raises(TypeError, match="SB3 VecEnv"):
        make_agent("ppo", gym.make_vec("ViTSkip-Shapes-v0", num_envs=2, **micro_kwargs))
    with pytest.raises(TypeError, match="Gymnasium vector API"):
        make_agent("reinforce", VecMonitor(env))


class RandomAgent:
    """The smallest custom algorithm: ``cls(env, **kwargs)``, ``learn`` and SB3's ``predict``."""

    def __init__(self, env: gym.vector.VectorEnv, p_execute: float = 0.5) -> None:
        self.env, self.p_execute, self.num_timesteps = env, p_execute, 0
        self.rng = np.random.default_rng(0)

    def learn(self, total_timesteps: int, callback: Any = None, progress_bar: bool = False) -> RandomAgent:
        self.env.reset(seed=0)
        while self.num_timesteps < total_timesteps:
            self.env.step(self.predict(None)[0])
            self.num_timesteps += self.env.num_envs
        return self

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> tuple:
        n = self.env.num_envs if obs is None else len(obs)
        return (self.rng.random(n) < self.p_execute).astype(np.int64), state


def test_custom_algorithms_as_module_class(micro_kwargs: dict) -> None:
    env = SB3VecEnv(N, **micro_kwargs)
    agent = make_agent(f"{__name__}:RandomAgent", env, p_execute=0.0)
    assert isinstance(agent, RandomAgent) and agent.env is env.vector_env  # the Gymnasium vector API
    agent.learn(64)
    assert evaluate_agent(agent, micro_kwargs, 16, deterministic=False)["executed_blocks"] == 0.0
    reinforce = make_agent("agents.reinforce:Reinforce", env, seed=0, n_steps=8)
    assert isinstance(reinforce, Reinforce) and reinforce.config["n_steps"] == 8
    reinforce.learn(128)
    assert reinforce.num_timesteps == 128


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def test_agents_on_device(micro_kwargs: dict, device: str) -> None:
    """PPO and REINFORCE with env, networks and evaluation on ``device`` learn to skip when compute is expensive."""
    kwargs = {**micro_kwargs, "device": device, "compute_weight": SKIP_PAYS}
    model = make_agent("ppo", VecMonitor(SB3VecEnv(64, **kwargs)), seed=0, n_steps=8, device=device, learning_rate=1e-3)
    model.learn(4096)
    venv = gym.make_vec("ViTSkip-Shapes-v0", num_envs=64, **kwargs)
    agent = make_agent("reinforce", venv, seed=0, n_steps=8, device=device, learning_rate=1e-2)
    agent.learn(4096)
    for trained in (model, agent):
        result = evaluate_agent(trained, kwargs, 64, num_envs=32)
        assert result["images"] == 64 and result["executed_blocks"] < 1.0, result
