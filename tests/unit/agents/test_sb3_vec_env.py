"""SB3VecEnv: SB3's VecEnv contract over the native vector env (autoreset, infos, seeds, options, wrappers)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

from agents import SB3VecEnv
from vitskip_env import ViTSkipVectorEnv

N, DEPTH = 4, 4
EPISODE_KEYS = {
    "label",
    "prediction",
    "correct",
    "confidence",
    "is_success",
    "executed_blocks",
    "compute_ratio",
    "image_index",
    "difficulty",
}


def actions(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2, size=N)


@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
def test_same_transitions_as_native_env_with_terminal_observation(micro_kwargs: dict, obs_mode: str) -> None:
    kwargs = {**micro_kwargs, "obs_mode": obs_mode}
    env = SB3VecEnv(N, **kwargs)
    native = ViTSkipVectorEnv(N, autoreset_mode=AutoresetMode.NEXT_STEP, **kwargs)
    env.seed(5)
    obs = env.reset()
    nobs, ninfo = native.reset(seed=5)
    assert [i["image_index"] for i in env.reset_infos] == ninfo["image_index"].tolist()
    rng = np.random.default_rng(0)
    for episode in range(2):
        for t in range(DEPTH):
            _assert_obs_equal(obs, nobs)
            a = actions(rng)
            obs, rewards, dones, infos = env.step(a)
            nobs, nrewards, nterm, ntrunc, ninfo = native.step(a)
            assert rewards.dtype == np.float32 and dones.dtype == np.bool_ and len(infos) == N
            np.testing.assert_allclose(rewards, nrewards, rtol=1e-6)
            np.testing.assert_array_equal(dones, nterm | ntrunc)
            assert all(info["TimeLimit.truncated"] is False for info in infos)
            if t < DEPTH - 1:
                assert not dones.any() and all(set(info) == {"TimeLimit.truncated"} for info in infos)
        assert dones.all(), episode
        for j, info in enumerate(infos):
            _assert_obs_equal(info["terminal_observation"], _row(nobs, j))  # the true final observation
            assert set(info) == {"TimeLimit.truncated", "terminal_observation"} | EPISODE_KEYS
            assert info["executed_blocks"] == int(ninfo["executed_blocks"][j]) and isinstance(info["correct"], bool)
            assert info["is_success"] == info["correct"] and info["image_index"] == int(ninfo["image_index"][j])
        nobs, _, _, _, reset_info = native.step(np.zeros(N, dtype=np.int64))  # NEXT_STEP: the reset step
        assert [i["image_index"] for i in env.reset_infos] == reset_info["image_index"].tolist()


def _row(obs: np.ndarray | dict, j: int) -> np.ndarray | dict:
    return {k: v[j] for k, v in obs.items()} if isinstance(obs, dict) else obs[j]


def _assert_obs_equal(a: np.ndarray | dict, b: np.ndarray | dict) -> None:
    if isinstance(b, dict):
        assert list(a) == list(b)
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])
    else:
        np.testing.assert_array_equal(a, b)


def test_seeds_reproduce_and_are_used_once(micro_kwargs: dict) -> None:
    env = SB3VecEnv(N, **micro_kwargs)
    assert env.seed(3) == [3, 4, 5, 6]
    first = env.reset()
    images = [i["image_index"] for i in env.reset_infos]
    env.reset()  # seeds were used once: the stream continues
    assert [i["image_index"] for i in env.reset_infos] != images
    env.seed(3)
    np.testing.assert_array_equal(env.reset(), first)
    assert [i["image_index"] for i in env.reset_infos] == images
    native = ViTSkipVectorEnv(N, **micro_kwargs)
    assert native.reset(seed=3)[1]["image_index"].tolist() == images
    env.seed(4)
    env.reset()
    assert [i["image_index"] for i in env.reset_infos] != images


def test_options_image_index_per_env(micro_kwargs: dict) -> None:
    env = SB3VecEnv(N, **micro_kwargs)
    env.set_options([{"image_index": k} for k in (7, 1, 30, 2)])
    env.reset()
    assert [i["image_index"] for i in env.reset_infos] == [7, 1, 30, 2]
    env.reset()  # options are used once
    assert [i["image_index"] for i in env.reset_infos] != [7, 1, 30, 2]
    env.set_options([{"image_index": 1}, {}, {}, {}])
    with pytest.raises(ValueError, match="one integer per sub-environment"):
        env.reset()
    env.set_options({"colour": "red"})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset()


def test_action_masks_attrs_and_wrapping(micro_kwargs: dict) -> None:
    env = SB3VecEnv(N, **{**micro_kwargs, "always_execute": (1,)})
    env.reset()
    masks = env.env_method("action_masks")
    assert len(masks) == N and all(m.shape == (2,) and m.dtype == np.bool_ for m in masks)
    assert np.stack(masks).all()
    env.step(np.zeros(N, dtype=np.int64))
    wrapped = VecNormalize(VecMonitor(env))
    assert is_masking_supported(wrapped)
    stacked = get_action_masks(wrapped)  # what MaskablePPO calls
    np.testing.assert_array_equal(stacked, np.tile([False, True], (N, 1)))  # block 1 is always executed
    assert [m.tolist() for m in env.env_method("action_masks", indices=[2])] == [[False, True]]
    assert env.get_attr("backbone") == [env.backbone] * N and env.get_attr("num_envs", indices=[0, 1]) == [N, N]
    assert env.has_attr("action_masks") and not env.has_attr("no_such_attr")
    env.set_attr("note", 3)
    assert env.vector_env.note == 3
    with pytest.raises(ValueError, match="share one ViTSkipVectorEnv"):
        env.set_attr("note", 4, indices=[0])
    assert env.env_is_wrapped(Monitor) == [False] * N


def test_vec_monitor_and_vec_normalize(micro_kwargs: dict) -> None:
    norm = VecNormalize(VecMonitor(SB3VecEnv(N, **micro_kwargs)), gamma=1.0)
    raw = SB3VecEnv(N, **micro_kwargs)  # the same episodes, unnormalised
    norm.seed(0)
    raw.seed(0)
    norm.reset()
    raw.reset()
    rng = np.random.default_rng(1)
    raw_total = np.zeros(N)
    for _ in range(DEPTH):
        a = actions(rng)
        obs, _, dones, infos = norm.step(a)
        _, raw_rewards, _, raw_infos = raw.step(a)
        raw_total += raw_rewards
    assert dones.all() and obs.shape == (N, 37)
    for j, info in enumerate(infos):
        assert info["episode"]["l"] == DEPTH
        assert info["episode"]["r"] == pytest.approx(raw_total[j], abs=1e-5)
        # VecNormalize rewrites the terminal observation with the statistics of this step
        expected = norm.normalize_obs(raw_infos[j]["terminal_observation"])
        np.testing.assert_allclose(info["terminal_observation"], expected, rtol=1e-6)
        assert not np.allclose(expected, raw_infos[j]["terminal_observation"])


def test_tokens_obs_and_env_id(micro_kwargs: dict) -> None:
    kwargs = {k: v for k, v in micro_kwargs.items() if k != "dataset"}
    env = SB3VecEnv(2, env_id="ViTSkip-Shapes-v0", obs_mode="tokens", **kwargs)
    assert env.vector_env.options.dataset == "shapes" and env.depth == DEPTH
    obs = env.reset()
    assert set(obs) == {"tokens", "block", "executed_frac"} and obs["tokens"].shape == (2, 17, 32)
    for _ in range(DEPTH):
        obs, _, dones, infos = env.step(np.ones(2, dtype=np.int64))
    assert dones.all() and infos[1]["terminal_observation"]["tokens"].shape == (17, 32)
    assert (infos[1]["terminal_observation"]["block"] == 0).all() and (obs["block"][:, 0] == 1).all()


def test_from_vector_env_needs_same_step(micro_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnv.from_vector_env(ViTSkipVectorEnv(2, **micro_kwargs))
    venv = ViTSkipVectorEnv(2, autoreset_mode=AutoresetMode.SAME_STEP, **micro_kwargs)
    env = SB3VecEnv.from_vector_env(venv)
    assert env.vector_env is venv and env.num_envs == 2 and env.reset().shape == (2, 37)
    with pytest.raises(RuntimeError, match="step_async"):
        env.step_wait()


def test_skip_exit_episodes_end_one_by_one_with_their_exit_block(micro_kwargs: dict) -> None:
    env = SB3VecEnv(N, **{**micro_kwargs, "actions": "skip_exit", "exits": "linear"})
    assert env.action_space.n == 3 and get_action_masks(env).shape == (N, 3)
    env.seed(0)
    env.reset()
    env.step_async(np.ones(N, dtype=np.int64))
    env.step_wait()
    env.step_async(np.ones(N, dtype=np.int64))
    env.step_wait()
    env.step_async(np.array([2, 2, 1, 0]))  # rows 0, 1 leave after the head that read block 1
    _, _, dones, infos = env.step_wait()
    assert dones.tolist() == [True, True, False, False]
    assert [i.get("exit_block") for i in infos] == [2, 2, None, None] and "terminal_observation" in infos[0]
