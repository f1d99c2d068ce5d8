"""``actions="skip_exit"``: the exit action, its masks and observation, real work per row, native == sync."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from same_outputs import assert_same

import vitskip_env  # noqa: F401  (registers the ids)
from vitskip_env import ViTSkipVectorEnv
from vitskip_env.model import SkippableViT
from vitskip_env.model.exits import ExitHeads

ID = "ViTSkip-Shapes-v0"


@pytest.fixture
def exit_kwargs(micro_kwargs: dict) -> dict:
    """MICRO with linear exits after blocks 1 and 2 of the 4-block backbone."""
    return {**micro_kwargs, "actions": "skip_exit", "exits": "linear"}


def test_spaces_masks_and_an_exit_episode(exit_kwargs: dict) -> None:
    env = gym.make(ID, **exit_kwargs)
    assert env.action_space == gym.spaces.Discrete(3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32 + 4 + 1 + 5,) and obs in env.observation_space
    np.testing.assert_array_equal(obs[-5:], -1.0)  # no exit head passed yet
    masks = []
    for _ in range(2):
        masks.append(env.unwrapped.action_masks().tolist())
        obs, reward, terminated, _, info = env.step(1)
        assert not terminated and "prediction" not in info
    assert masks == [[True, True, False], [True, True, False]]
    assert env.unwrapped.action_masks().tolist() == [True, True, True]  # a head read the tokens after block 1
    assert obs[-5] == 1.0 and obs[-4:].min() >= -1.0 and obs[-4:].max() <= 1.0
    obs, reward, terminated, _, info = env.step(2)
    assert terminated and info["exit_block"] == 2 and info["executed_blocks"] == 2
    vit = env.unwrapped.backbone
    x = env.unwrapped.dataset.normalize(env.unwrapped.dataset.images[info["image_index"]][None])
    with torch.no_grad():
        expected = vit.head(vit.vit.blocks[1](vit.vit.blocks[0](vit.embed(x)))).argmax(1).item()
    assert info["prediction"] == expected  # the head after block 1 predicted
    assert reward == pytest.approx(float(info["correct"]))  # exiting costs nothing more
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


def test_exit_where_not_allowed_executes_and_head_cost_is_charged(exit_kwargs: dict) -> None:
    env = gym.make(ID, **exit_kwargs)
    core = env.unwrapped.core
    env.reset(seed=1)
    _, _, terminated, _, info = env.step(2)  # no head yet: turned into execute
    assert not terminated and info["action_overridden"] and core.executed[0, 0]
    _, _, _, _, info = env.step(0)  # skip block 1; the head after it still runs, and is paid for
    head = float(core.head_costs[0])
    assert 0 < head < 0.01
    assert info["reward_components"]["compute"] == pytest.approx(-0.1 * head)


def test_checkers_pass(exit_kwargs: dict) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = gym.make(ID, **exit_kwargs)
    check_env(env.unwrapped)
    sb3_check(gym.make(ID, **exit_kwargs).unwrapped, warn=False)


@pytest.mark.parametrize(("mode", "obs_mode"), [(AutoresetMode.NEXT_STEP, "flat"), (AutoresetMode.SAME_STEP, "dict")])
def test_native_equals_sync_with_exits(exit_kwargs: dict, mode: AutoresetMode, obs_mode: str) -> None:
    n = 4
    kwargs = {**exit_kwargs, "num_images": 5, "obs_mode": obs_mode}
    native = gym.make_vec(ID, num_envs=n, autoreset_mode=mode, **kwargs)
    sync = gym.make_vec(ID, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}, **kwargs)
    assert isinstance(native, ViTSkipVectorEnv) and isinstance(sync, SyncVectorEnv)
    assert native.action_space == sync.action_space and native.observation_space == sync.observation_space
    assert_same(native.reset(seed=3), sync.reset(seed=3), ordered=False)
    rng = np.random.default_rng(0)
    ends, lengths = 0, set()
    for _ in range(30):
        actions = rng.integers(0, 3, size=n)
        out_native, out_sync = native.step(actions), sync.step(actions)
        assert_same(out_native, out_sync, ordered=False)
        ends += int(out_native[2].sum())
        info = out_native[4].get("final_info", out_native[4])
        if "exit_block" in info:
            lengths |= set(info["exit_block"][info["_exit_block"]].tolist())
        np.testing.assert_array_equal(native.action_masks(), np.stack(sync.call("action_masks")))
    assert ends >= 10 and len(lengths) >= 2  # episodes of different lengths, ending at different steps


def test_render_shows_each_row_at_its_own_block(exit_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(2, render_mode="rgb_array", **exit_kwargs)
    single = gym.make(ID, render_mode="rgb_array", **exit_kwargs)
    venv.reset(seed=0)
    single.reset(seed=1)  # row 1 of the vector env
    for action in (1, 1):
        venv.step(np.array([action, action]))
        single.step(action)
    venv.step(np.array([2, 1]))  # row 0 exits (restarts next step), row 1 goes on to block 3
    single.step(1)
    frames = venv.render()
    np.testing.assert_array_equal(frames[1], single.render())  # the same strip: row 1 at block 3


def test_rows_at_different_blocks_run_each_block_once_on_its_rows(exit_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(4, **exit_kwargs)
    venv.reset(seed=0)
    calls: list[tuple[int, int]] = []
    for i, blk in enumerate(venv.backbone.vit.blocks):
        blk.register_forward_hook(lambda m, args, out, i=i: calls.append((i, args[0].shape[0])))
    venv.step(np.array([1, 1, 1, 1]))
    venv.step(np.array([1, 1, 1, 1]))
    calls.clear()
    venv.step(np.array([2, 2, 1, 0]))  # rows 0, 1 exit: no work; row 2 runs block 2; row 3 skips it
    assert calls == [(2, 1)]
    calls.clear()
    # rows 0 and 1 restart (NEXT_STEP): they do nothing this step; rows 2, 3 are at block 3
    _, rewards, terminated, _, _ = venv.step(np.array([1, 1, 1, 1]))
    assert calls == [(3, 2)] and terminated[2:].all() and (rewards[:2] == 0).all()
    calls.clear()
    venv.step(np.array([1, 1, 1, 1]))  # rows 0, 1 at block 0; rows 2, 3 restarting
    assert calls == [(0, 2)]


def test_bad_input_is_explained(micro_kwargs: dict) -> None:
    with pytest.raises(FileNotFoundError, match=r"needs exit heads.*exits='linear'"):
        gym.make(ID, **micro_kwargs, actions="skip_exit")
    with pytest.raises(ValueError, match="actions must be one of"):
        gym.make(ID, **micro_kwargs, actions="exit")
    with pytest.raises(ValueError, match="pass actions='skip_exit'"):
        gym.make(ID, **micro_kwargs, exits="linear")
    other = ExitHeads(SkippableViT("micro", num_classes=10, depth=6), positions=[1, 2])
    with pytest.raises(ValueError, match="6-block"):
        gym.make(ID, **micro_kwargs, actions="skip_exit", exits=other)
    env = gym.make(ID, **micro_kwargs, actions="skip_exit", exits="linear")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="2 \\(exit"):
        env.step(3)
    with pytest.raises(ValueError, match="reward_fn is not supported"):
        gym.make(ID, **micro_kwargs, actions="skip_exit", exits="linear", reward_fn=lambda ctx: {})


def test_exit_is_allowed_only_right_after_a_head(micro_kwargs: dict) -> None:
    vit = SkippableViT("micro", num_classes=10)
    heads = ExitHeads(vit, positions=[0, 2])  # a gap: no head after block 1
    env = gym.make(ID, **{**micro_kwargs, "backbone": vit, "actions": "skip_exit", "exits": heads, "min_blocks": 1})
    env.reset(seed=0)
    allowed = []
    for action in (0, 1, 0, 1):  # skip block 0, so min_blocks=1 forbids the first exit
        allowed.append(bool(env.unwrapped.action_masks()[2]))
        env.step(action)
    assert allowed == [False, False, False, True]
    env.reset(seed=0)
    env.step(1)
    assert env.unwrapped.action_masks()[2]  # after block 0 with one block run
    _, _, terminated, _, info = env.step(2)
    assert terminated and info["exit_block"] == 1
