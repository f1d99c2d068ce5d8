"""Every registered id passes Gymnasium's and Stable-Baselines3's env checkers without warnings."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import vitskip_env
from vitskip_env import ENV_IDS, ViTSkipEnv, ViTSkipVectorEnv


@contextmanager
def no_warnings(allowed: tuple[str, ...] = ()) -> Iterator[None]:
    """Fail on any warning whose message contains none of ``allowed``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    unexpected = [f"{w.category.__name__}: {w.message}" for w in caught if not any(a in str(w.message) for a in allowed)]
    assert not unexpected, unexpected


@pytest.fixture
def id_kwargs(request: pytest.FixtureRequest, micro_kwargs: dict) -> dict:
    """Keyword arguments for an id: an untrained micro backbone and, for real datasets, a miniature copy."""
    dataset = ENV_IDS[request.param]
    kwargs = {**micro_kwargs, "split": "train"}
    del kwargs["dataset"]
    if dataset in ("cifar10", "cifar100", "tinyimagenet"):
        fixture = {"cifar10": "mini_cifar10", "cifar100": "mini_cifar100", "tinyimagenet": "mini_tiny"}[dataset]
        kwargs["data_root"] = request.getfixturevalue(fixture)["root"]
    if dataset == "shapes":
        kwargs["split"] = "test"  # generated once per session (10k images) and cached
    if dataset in ("relations", "pointers"):
        kwargs["split"] = "val"  # the smallest built-in split (5k images)
    return kwargs


def test_ids_are_registered_with_both_entry_points() -> None:
    builtin = {"ViTSkip-Shapes-v0", "ViTSkip-Relations-v0"}
    assert builtin | {"ViTSkip-CIFAR10-v0", "ViTSkip-CIFAR100-v0", "ViTSkip-TinyImageNet-v0"} <= set(ENV_IDS)
    assert ("ViTSkip-Digits-v0" in ENV_IDS) == (importlib.util.find_spec("sklearn") is not None)
    for env_id, dataset in ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.entry_point == "vitskip_env.env.single_env:ViTSkipEnv"
        assert spec.vector_entry_point == "vitskip_env.env.vector_env:ViTSkipVectorEnv"
        assert spec.kwargs == {"dataset": dataset}


def test_registration_is_idempotent() -> None:
    with no_warnings():
        assert vitskip_env.register_envs() == []
        importlib.reload(vitskip_env)


@pytest.mark.parametrize("id_kwargs", sorted(ENV_IDS), indirect=True)
def test_checkers_pass_for_every_registered_id(request: pytest.FixtureRequest, id_kwargs: dict) -> None:
    env_id = request.node.callspec.params["id_kwargs"]
    env = gym.make(env_id, **id_kwargs)
    assert isinstance(env.unwrapped, ViTSkipEnv)
    assert env.unwrapped.dataset.name == ENV_IDS[env_id]
    with no_warnings():
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)
        # The wrapped env (passive checker, order enforcing) as users get it from gym.make: two episodes.
        env.reset(seed=0)
        for _ in range(2 * env.unwrapped.backbone.depth):
            _, _, terminated, _, info = env.step(env.action_space.sample())
            if terminated:
                assert {"correct", "executed_mask", "is_success"} <= set(info)
                env.reset()
    venv = gym.make_vec(env_id, num_envs=3, **id_kwargs)
    assert isinstance(venv, ViTSkipVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs in venv.observation_space


@pytest.mark.parametrize("obs_mode", ["dict", "tokens"])
def test_checkers_pass_for_every_observation_mode(micro_kwargs: dict, obs_mode: str) -> None:
    env = gym.make("ViTSkip-Shapes-v0", **micro_kwargs, obs_mode=obs_mode, min_blocks=2, always_execute=(0,))
    # SB3 rightly notes that a (T, D) entry needs a custom features extractor (agents/extractors.py).
    allowed = ("unconventional shape",) if obs_mode == "tokens" else ()
    with no_warnings(allowed):
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)


def test_maskable_ppo_learns_a_few_steps_with_action_masks(micro_kwargs: dict) -> None:
    sb3_contrib = pytest.importorskip("sb3_contrib")
    env = gym.make("ViTSkip-Shapes-v0", **micro_kwargs, min_blocks=3)
    model = sb3_contrib.MaskablePPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    # Every finished episode respected min_blocks, because masked actions were never chosen.
    obs, _ = env.reset(seed=1)
    for _ in range(4):
        action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
        obs, _, terminated, _, info = env.step(int(action))
        assert not info["action_overridden"]
    assert terminated and info["executed_blocks"] >= 3 and np.asarray(info["executed_mask"]).sum() >= 3
