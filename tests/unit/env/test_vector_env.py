"""ViTSkipVectorEnv: the same transitions as SyncVectorEnv of single envs, autoreset modes, input checks."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from same_outputs import assert_same

import vitskip_env  # noqa: F401  (registers the ids)
from vitskip_env import ViTSkipVectorEnv

ID = "ViTSkip-Shapes-v0"


@pytest.mark.parametrize(
    ("mode", "obs_mode"),
    [(AutoresetMode.NEXT_STEP, "flat"), (AutoresetMode.SAME_STEP, "flat"), (AutoresetMode.NEXT_STEP, "dict")],
)
def test_native_equals_sync_vector_env(micro_kwargs: dict, mode: AutoresetMode, obs_mode: str) -> None:
    n = 3
    kwargs = {**micro_kwargs, "num_images": 5, "obs_mode": obs_mode, "min_blocks": 2}  # 5 images: epochs roll over
    native = gym.make_vec(ID, num_envs=n, autoreset_mode=mode, **kwargs)
    sync = gym.make_vec(ID, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}, **kwargs)
    assert isinstance(native, ViTSkipVectorEnv) and isinstance(sync, SyncVectorEnv)
    assert native.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"] == mode
    assert native.observation_space == sync.observation_space and native.action_space == sync.action_space
    assert_same(native.reset(seed=11), sync.reset(seed=11))
    rng = np.random.default_rng(0)
    terminals = 0
    for _ in range(5 * 4 + 3):  # five episodes (+ the NEXT_STEP reset steps)
        actions = rng.integers(0, 2, size=n)
        out_native, out_sync = native.step(actions), sync.step(actions)
        assert_same(out_native, out_sync)
        terminals += int(out_native[2].all())
        np.testing.assert_array_equal(native.action_masks(), np.stack(sync.call("action_masks")))
    assert terminals >= 4
    assert_same(native.reset(), sync.reset())


def test_infos_are_dict_of_arrays_with_masks(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(4, **micro_kwargs)
    obs, infos = venv.reset(seed=0)
    assert obs.shape == (4, 32 + 4 + 1) and obs.dtype == np.float32 and obs in venv.observation_space
    assert infos["image_index"].dtype == np.int64 and infos["_image_index"].all()
    for _ in range(4):
        obs, rewards, terminated, truncated, infos = venv.step(np.ones(4, dtype=np.int64))
        assert rewards.dtype == np.float64 and terminated.dtype == truncated.dtype == np.bool_
    assert terminated.all() and not truncated.any()
    assert infos["executed_mask"].shape == (4, 4) and infos["executed_mask"].all()
    assert infos["reward_components"]["compute"].shape == (4,) and infos["reward_components"]["_compute"].all()
    total = sum(v for k, v in infos["reward_components"].items() if not k.startswith("_"))
    np.testing.assert_allclose(total, rewards, rtol=1e-6)
    # NEXT_STEP: the next step only starts the new batch.
    _, rewards2, terminated2, _, infos2 = venv.step(np.zeros(4, dtype=np.int64))
    assert (rewards2 == 0).all() and not terminated2.any() and set(infos2) == {"image_index", "_image_index"}


def test_vector_streams_match_single_env_seeds(micro_kwargs: dict) -> None:
    n = 4
    venv = ViTSkipVectorEnv(n, **{**micro_kwargs, "num_images": 7})
    batches = [venv.reset(seed=20)[1]["image_index"]] + [venv.reset()[1]["image_index"] for _ in range(9)]
    streams = np.stack(batches, 1)
    for j in range(n):
        env = gym.make(ID, **{**micro_kwargs, "num_images": 7})
        single = [env.reset(seed=20 + j)[1]["image_index"]] + [env.reset()[1]["image_index"] for _ in range(9)]
        assert streams[j].tolist() == single
        assert sorted(single[:7]) == list(range(7))
    seeds = [5, None, 7, 8]
    first = venv.reset(seed=seeds)[1]["image_index"]
    assert first[0] == gym.make(ID, **{**micro_kwargs, "num_images": 7}).reset(seed=5)[1]["image_index"]


def test_sequential_sampling_sweeps_the_split(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(4, **{**micro_kwargs, "num_images": 10, "sampling": "sequential"})
    batches = [venv.reset(seed=0)[1]["image_index"].tolist()] + [venv.reset()[1]["image_index"].tolist() for _ in range(2)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


@pytest.mark.parametrize(
    "bad",
    [
        np.array([0, 1, 2]),
        np.array([0, -1, 1]),
        np.array([0.0, 1.0, 1.0]),
        np.array([0.5, 1, 1]),
        np.array([np.nan, 1, 1]),
        np.array([0, 1]),
        np.array([[0, 1, 1]]),
        [1, 1, 0.5],
        torch.tensor([0.0, 1.0, 1.0]),
        torch.tensor([0, 1, 3]),
    ],
)
def test_invalid_vector_actions_raise(micro_kwargs: dict, bad: Any) -> None:
    venv = ViTSkipVectorEnv(3, **micro_kwargs)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"0 \(skip the block\) or 1 \(execute it\)"):
        venv.step(bad)


def test_torch_and_list_actions_are_accepted(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(3, **micro_kwargs)
    venv.reset(seed=0)
    venv.step(torch.tensor([0, 1, 1]))
    venv.step([1, 0, 1])
    venv.step(np.array([True, False, True]))


def test_reset_mask_must_cover_every_env_and_disabled_mode(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(3, autoreset_mode="Disabled", **micro_kwargs)
    venv.reset(seed=0, options={"reset_mask": np.ones(3, dtype=bool)})
    with pytest.raises(ValueError, match="aligned"):
        venv.reset(options={"reset_mask": np.array([True, False, True])})
    for _ in range(4):
        venv.step(np.ones(3, dtype=np.int64))
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.ones(3, dtype=np.int64))
    with pytest.raises(ValueError, match="autoreset_mode must be"):
        ViTSkipVectorEnv(3, autoreset_mode="sometimes", **micro_kwargs)


def test_vector_render_and_backbone_attribute(micro_kwargs: dict) -> None:
    venv = gym.make_vec(ID, num_envs=2, render_mode="rgb_array", **micro_kwargs)
    venv.reset(seed=0)
    frames = venv.render()
    assert len(frames) == 2 and frames[0].shape == (128, 152, 3)
    assert venv.unwrapped.backbone.depth == 4
