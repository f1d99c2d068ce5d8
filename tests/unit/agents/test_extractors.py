"""Features extractors: chosen from the observation space, block embedding, attention pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

from agents import SB3VecEnv
from agents.extractors import (
    DictSkipExtractor,
    FlatSkipExtractor,
    TokenSkipExtractor,
    extractor_for,
    flat_layout,
    policy_kwargs_for,
)
from vitskip_env import ViTSkipVectorEnv

D, L, T = 32, 4, 17


def batch(micro_kwargs: dict, obs_mode: str, n: int = 3) -> tuple[spaces.Space, dict | torch.Tensor]:
    """Observation space and a batch of real observations (block 1) as tensors."""
    venv = ViTSkipVectorEnv(n, **{**micro_kwargs, "obs_mode": obs_mode})
    venv.reset(seed=0)
    obs, *_ = venv.step(np.ones(n, dtype=np.int64))
    if isinstance(obs, dict):
        return venv.single_observation_space, {k: torch.as_tensor(v) for k, v in obs.items()}
    return venv.single_observation_space, torch.as_tensor(obs)


@pytest.mark.parametrize(
    ("obs_mode", "cls"), [("flat", FlatSkipExtractor), ("dict", DictSkipExtractor), ("tokens", TokenSkipExtractor)]
)
def test_extractor_for_each_obs_mode(micro_kwargs: dict, obs_mode: str, cls: type) -> None:
    space, obs = batch(micro_kwargs, obs_mode)
    assert extractor_for(space) is cls
    torch.manual_seed(0)
    extractor = cls(space, features_dim=24)
    out = extractor(obs)
    assert out.shape == (3, 24) and torch.isfinite(out).all()
    out.sum().backward()
    assert extractor.head.block_embed.weight.grad is not None  # the block index goes through the embedding
    kwargs = policy_kwargs_for(space, features_dim=24)
    assert kwargs == {"features_extractor_class": cls, "features_extractor_kwargs": {"features_dim": 24}}


def test_flat_layout_and_rejections(micro_kwargs: dict) -> None:
    space, _ = batch(micro_kwargs, "flat")
    assert flat_layout(space) == (D, L)
    for bad in (spaces.Box(0, 1, (10,)), spaces.Box(-1, 1, (10,)), spaces.Box(-1, 1, (4, 4)), spaces.Discrete(3)):
        with pytest.raises(ValueError, match="flat ViTSkip"):
            extractor_for(bad)
    with pytest.raises(ValueError, match="not a ViTSkip one"):
        extractor_for(spaces.Dict({"a": spaces.Box(0, 1, (2,))}))
    with pytest.raises(ValueError, match="keys"):
        DictSkipExtractor(spaces.Dict({"a": spaces.Box(0, 1, (2,))}))


def test_flat_and_dict_extractors_compute_the_same_function(micro_kwargs: dict) -> None:
    flat_space, flat_obs = batch(micro_kwargs, "flat")
    dict_space, dict_obs = batch(micro_kwargs, "dict")
    flat = FlatSkipExtractor(flat_space)
    twin = DictSkipExtractor(dict_space)
    twin.load_state_dict(flat.state_dict())
    torch.testing.assert_close(flat(flat_obs), twin(dict_obs))


def test_block_index_changes_the_features(micro_kwargs: dict) -> None:
    space, obs = batch(micro_kwargs, "flat")
    extractor = FlatSkipExtractor(space)
    moved = obs.clone()
    moved[:, D : D + L] = torch.roll(obs[:, D : D + L], 1, dims=1)
    assert not torch.allclose(extractor(obs), extractor(moved))


def test_token_pooling_is_attention_over_tokens(micro_kwargs: dict) -> None:
    space, obs = batch(micro_kwargs, "tokens")
    torch.manual_seed(0)
    extractor = TokenSkipExtractor(space, attn_dim=16, num_heads=2)
    out = extractor(obs)
    perm = torch.randperm(T)
    shuffled = {**obs, "tokens": obs["tokens"][:, perm]}
    torch.testing.assert_close(extractor(shuffled), out)  # pooling: token order does not matter
    changed = {**obs, "tokens": obs["tokens"] * torch.linspace(0.5, 1.5, T).view(1, T, 1)}
    assert not torch.allclose(extractor(changed), out)  # ... but token content does
    with pytest.raises(ValueError, match="divisible"):
        TokenSkipExtractor(space, attn_dim=10, num_heads=4)


@pytest.mark.parametrize(("obs_mode", "policy"), [("flat", "MlpPolicy"), ("tokens", "MultiInputPolicy")])
def test_extractors_plug_into_sb3(micro_kwargs: dict, obs_mode: str, policy: str) -> None:
    env = SB3VecEnv(2, **{**micro_kwargs, "obs_mode": obs_mode})
    model = PPO(policy, env, n_steps=4, batch_size=8, policy_kwargs=policy_kwargs_for(env.observation_space), seed=0)
    assert isinstance(model.policy.features_extractor, extractor_for(env.observation_space))
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (2,)
