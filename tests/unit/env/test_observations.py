"""Observation encoders: bounds, modes, pooling, fresh arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from gymnasium import spaces

from vitskip_env import SkippableViT, ViTSkipEnv, ViTSkipVectorEnv
from vitskip_env.observations import ObservationEncoder, encoder_for, executed_fraction


def test_flat_encoding_layout_and_bound() -> None:
    enc = ObservationEncoder("flat", depth=3, num_tokens=5, embed_dim=8)
    tokens = torch.randn(2, 5, 8) * 1e6  # any scale: standardised features stay inside the Box
    tokens[1, 0] = 0.0  # a constant vector standardises to zeros, not NaN
    obs = enc(tokens, 1, torch.tensor([1 / 3, 0.0]))
    assert obs.shape == (2, 8 + 3 + 1) and obs.dtype == torch.float32
    feat = obs[0, :8]
    assert feat.mean().abs() < 1e-5 and (feat.var(unbiased=False) - 1).abs() < 1e-3
    assert torch.equal(obs[1, :8], torch.zeros(8))
    assert obs[:, 8:11].tolist() == [[0, 1, 0], [0, 1, 0]]
    assert obs[:, 11].tolist() == pytest.approx([1 / 3, 0.0])
    space = enc.space()
    assert space.contains(obs.numpy()[0]) and space.high[0] == np.float32(math.sqrt(8))
    # Worst case: one entry carries all the energy, still within sqrt(D - 1) < sqrt(D).
    spike = torch.zeros(1, 5, 8)
    spike[0, 0, 0] = 1.0
    assert space.contains(enc(spike, 3, torch.tensor([1.0])).numpy()[0])


def test_dict_and_tokens_modes(micro_kwargs: dict) -> None:
    for mode, feat_key, feat_shape in (("dict", "token", (32,)), ("tokens", "tokens", (17, 32))):
        env = ViTSkipEnv(**micro_kwargs, obs_mode=mode)
        assert isinstance(env.observation_space, spaces.Dict)
        obs, _ = env.reset(seed=0)
        assert list(obs) == sorted(obs) and obs[feat_key].shape == feat_shape
        assert obs["block"].shape == (4,) and obs["executed_frac"].shape == (1,)
        assert obs in env.observation_space
        obs2, *_ = env.step(1)
        assert obs2 in env.observation_space and obs2["executed_frac"][0] == 0.25
    # The dict entries are exactly the pieces of the flat vector.
    flat, _ = ViTSkipEnv(**micro_kwargs).reset(seed=4)
    parts, _ = ViTSkipEnv(**micro_kwargs, obs_mode="dict").reset(seed=4)
    np.testing.assert_array_equal(flat, np.concatenate([parts["token"], parts["block"], parts["executed_frac"]]))


def test_models_without_class_token_use_mean_of_patches(micro_kwargs: dict) -> None:
    model = timm.create_model(
        "vit_base_patch16_reg4_gap_256", num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2
    )
    vit = SkippableViT(model)
    enc = encoder_for(vit)
    assert enc.pool == "mean" and enc.num_prefix_tokens == 4
    tokens = torch.randn(1, vit.num_tokens, 32)
    expected = torch.nn.functional.layer_norm(tokens[:, 4:].mean(1), (32,), eps=1e-5)
    assert torch.allclose(enc(tokens, 0, torch.zeros(1))[:, :32], expected, atol=1e-6)
    env = ViTSkipEnv(**{**micro_kwargs, "backbone": vit})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32 + 2 + 1,) and obs in env.observation_space


def test_returned_arrays_are_fresh(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(2, **micro_kwargs)
    venv.reset(seed=0)
    obs1, r1, *_, info1 = venv.step(np.ones(2, dtype=np.int64))
    obs2, r2, *_, info2 = venv.step(np.ones(2, dtype=np.int64))
    assert not np.shares_memory(obs1, obs2) and not np.shares_memory(r1, r2) and not np.shares_memory(obs1, r1)
    comps1, comps2 = info1["reward_components"]["compute"], info2["reward_components"]["compute"]
    assert not np.shares_memory(comps1, comps2)


def test_executed_fraction_is_the_observed_share_of_executed_blocks(micro_kwargs: dict) -> None:
    executed = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    frac = executed_fraction(executed)
    assert frac.dtype == torch.float32 and frac.tolist() == [0.5, 0.0, 1.0]
    venv = ViTSkipVectorEnv(2, **micro_kwargs)
    venv.reset(seed=0)
    venv.step(np.array([1, 0]))
    obs, *_ = venv.step(np.array([1, 0]))
    assert obs[:, -1].tolist() == executed_fraction(venv.core.executed).tolist() == [0.5, 0.0]
