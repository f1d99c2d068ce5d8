"""Clear errors: one line naming the argument and what is allowed, raised before any heavy work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitskip_env.env.capacity as capacity
from vitskip_env import ViTSkipEnv, ViTSkipVectorEnv
from vitskip_env.rules import block_indices


@pytest.mark.parametrize("weight", [np.float32(1), np.float64(0.25), np.int64(2), 1, 0.5])
def test_reward_weights_accept_any_real_number(micro_kwargs: dict, weight: object) -> None:
    env = ViTSkipEnv(**micro_kwargs, accuracy_weight=weight, compute_weight=weight)
    assert env.core.rewards.weights["correct"] == float(weight)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), np.float32("-inf"), True, "1", None])
def test_reward_weights_refuse_bools_non_numbers_and_non_finite(micro_kwargs: dict, weight: object) -> None:
    with pytest.raises(ValueError, match=r"^accuracy_weight must be a finite number \(int, float or a NumPy scalar"):
        ViTSkipEnv(**micro_kwargs, accuracy_weight=weight)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (5, r"always_execute must be an iterable of block indices .* got int 5; for one block pass \(5,\)"),
        ("01", r"always_execute must be an iterable of block indices .* got str '01'"),
        ([0.5], r"always_execute must be an iterable of block indices .* it holds float 0.5"),
        ([True], r"it holds bool True"),
    ],
)
def test_always_execute_refuses_strings_numbers_and_non_integers(micro_kwargs: dict, value: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        ViTSkipEnv(**micro_kwargs, always_execute=value)
    with pytest.raises(TypeError, match=match):
        ViTSkipVectorEnv(2, **micro_kwargs, always_execute=value)


def test_always_execute_accepts_iterables_of_integers(micro_kwargs: dict) -> None:
    assert block_indices(np.array([3, 0])) == (3, 0)
    assert block_indices(range(2)) == (0, 1)
    assert block_indices(torch.tensor([1])) == (1,)
    env = ViTSkipEnv(**micro_kwargs, always_execute=np.array([0, 2]))
    assert env.core.always_execute == frozenset({0, 2})


@pytest.mark.parametrize("options", ["x", ["image_index"], 3])
def test_reset_options_must_be_a_dict(micro_kwargs: dict, options: object) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    with pytest.raises(
        TypeError, match=r"reset\(options=\.\.\.\) must be a dict or None.*supported keys: \['image_index', 'compute_weight'\]"
    ):
        env.reset(options=options)
    venv = ViTSkipVectorEnv(2, **micro_kwargs)
    with pytest.raises(TypeError, match=r"reset\(options=\.\.\.\) must be a dict or None"):
        venv.reset(options=options)


@pytest.mark.parametrize("seed", [1.5, "3", [1, 2.0], (None, 1.5)])
def test_vector_reset_seed_must_be_int_or_list_of_ints(micro_kwargs: dict, seed: object) -> None:
    venv = ViTSkipVectorEnv(2, **micro_kwargs)
    with pytest.raises(TypeError, match=r"reset\(seed=\.\.\.\) must be None or an int, or a list of num_envs=2 ints"):
        venv.reset(seed=seed)
    with pytest.raises(ValueError, match="num_envs=2 entries"):
        venv.reset(seed=[1, 2, 3])
    venv.reset(seed=np.int64(4))  # NumPy integers are integers
    venv.reset(seed=[None, 7])


def test_single_reset_seed_must_be_an_int(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    with pytest.raises(TypeError, match=r"reset\(seed=\.\.\.\) must be None or an int, got float 1.5"):
        env.reset(seed=1.5)
    a = env.reset(seed=np.int64(3))[0]
    b = env.reset(seed=3)[0]
    np.testing.assert_array_equal(a, b)


def test_huge_num_envs_is_refused_up_front_with_the_estimate(micro_kwargs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"num_envs=1000000000 needs about .* GiB on cpu .* but only .* GiB is available"):
        ViTSkipVectorEnv(10**9, **micro_kwargs)
    # With the free memory pinned, the limit follows the estimate: the largest allowed num_envs builds.
    monkeypatch.setattr(capacity, "available_host_memory", lambda: 64 * 2**20)
    with pytest.raises(ValueError, match=r"only 0\.1 GiB is available; use num_envs <= (\d+)") as err:
        ViTSkipVectorEnv(10**6, **micro_kwargs)
    limit = int(err.value.args[0].rsplit("num_envs <= ", 1)[1].split(",")[0])
    assert 100 < limit < 10**6
    assert ViTSkipVectorEnv(limit, **micro_kwargs).num_envs == limit
    with pytest.raises(ValueError, match=f"num_envs={limit + 1} needs"):
        ViTSkipVectorEnv(limit + 1, **micro_kwargs)


def test_estimate_covers_the_token_state_and_observations(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    vit = env.backbone
    device_bytes, host_bytes = capacity.bytes_per_env(vit, env.core.encoder.obs_dim)
    assert device_bytes > 4 * vit.num_tokens * vit.embed_dim * 3
    assert host_bytes > 2 * 4 * env.core.encoder.obs_dim  # the batched Box's low and high


def nan_reward(ctx: object) -> dict[str, torch.Tensor]:
    n = ctx.actions.shape[0]  # type: ignore[attr-defined]
    return {"ok": torch.zeros(n), "broken": torch.full((n,), float("nan"))}


def test_non_finite_reward_from_reward_fn_is_refused(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs, reward_fn=nan_reward)
    env.reset(seed=0)
    with pytest.raises(
        ValueError, match=r"reward_fn returned a non-finite reward \(NaN or inf\) in component\(s\) \['broken'\]"
    ):
        env.step(1)
    venv = ViTSkipVectorEnv(2, **micro_kwargs, reward_fn=nan_reward)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"reward_fn returned a non-finite reward"):
        venv.step(np.ones(2, dtype=np.int64))
