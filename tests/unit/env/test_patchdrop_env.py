"""ViTPatchDrop envs: checkers, real token removal in training, keep 1 = ordinary training, the clock,
AgentViT's reward, seeds and clear errors. The deterministic ``tokens`` clock keeps them exact."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitskip_env
from vitskip_env.env import RunConfig, TrainingRun, ViTPatchDropEnv, agentvit_reward
from vitskip_env.model.presets import ASSETS_DIR

SMALL = {"backbone": "micro", "clock": "tokens", "batch_size": 16, "val_images": 32, "minibatches_per_step": 2}


def make(**kwargs) -> ViTPatchDropEnv:
    return ViTPatchDropEnv("shapes", **{**SMALL, "budget": 6.0, **kwargs})


def test_ids_are_registered_and_make_builds_the_env() -> None:
    assert "ViTPatchDrop-Shapes-v0" in vitskip_env.PATCHDROP_ENV_IDS
    for env_id in ("ViTPatchDrop-Shapes-v0", "ViTPatchDrop-CIFAR100-v0", "ViTPatchDrop-TinyImageNet-v0"):
        assert env_id in gym.registry
    env = gym.make("ViTPatchDrop-Shapes-v0", **SMALL, budget=2.0)
    assert isinstance(env.unwrapped, ViTPatchDropEnv)
    env.close()


@pytest.mark.parametrize("mode", ["keep_ratio", "agentvit"])
def test_gymnasium_and_sb3_checkers_pass(mode: str) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make(mode=mode, budget=40.0)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(make(mode=mode, budget=40.0), warn=True)


def test_training_steps_remove_dropped_patches_from_every_block() -> None:
    env = make(keep_ratios=(0.5,))
    env.reset(seed=0)
    seen: list[int] = []
    vit = env.run.model

    def count(module: torch.nn.Module, args: tuple) -> None:
        if module.training:  # training minibatches (validation runs every patch, in eval mode)
            seen.append(args[0].shape[1])

    hooks = [b.register_forward_pre_hook(count) for b in vit.vit.blocks]
    try:
        _, _, _, _, info = env.step(0)
    finally:
        for h in hooks:
            h.remove()
    patches = vit.num_tokens - vit.num_prefix_tokens
    assert info["kept_patches"] == patches // 2
    assert seen == [1 + patches // 2] * (vit.depth * info["minibatches"])
    assert info["seconds"] == pytest.approx(2 * (1 + patches // 2) / vit.num_tokens)  # the tokens clock


def test_keep_one_is_bit_identical_to_ordinary_training() -> None:
    env = make(keep_ratios=(1.0,))
    env.reset(seed=3)
    ordinary = TrainingRun(env.run.config, env.run.budget)
    ordinary.reset(int(np.random.default_rng(3).integers(2**31 - 1)))  # the run seed reset(seed=3) draws
    env.step(0)
    vit, opt, cfg = ordinary.model, ordinary.opt, ordinary.config
    for _ in range(2):  # a plain timm training loop on the same batches and learning rate
        x, y = ordinary.next_batch()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * ordinary.lr_factor()
        loss = F.cross_entropy(vit.vit(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vit.parameters(), 1.0)
        opt.step()
        ordinary.charge(1.0)
    for a, b in zip(env.run.model.state_dict().values(), vit.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_same_seed_same_episode_and_a_different_seed_differs() -> None:
    def episode(seed: int) -> tuple[list, list]:
        env = make()
        obs, _ = env.reset(seed=seed)
        observations, rewards, done, i = [obs], [], False, 0
        while not done:
            obs, reward, done, _, _ = env.step(i % 3)
            observations.append(obs)
            rewards.append(reward)
            i += 1
        return observations, rewards

    a, b, c = episode(5), episode(5), episode(6)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True)) and a[1] == b[1]
    assert a[1] != c[1]


def test_budget_ends_the_episode_with_the_area_and_final_rewards() -> None:
    env = make(keep_ratios=(1.0, 0.5), budget=5.0)
    env.reset(seed=0)
    start_loss = env.start_val_loss
    done, total_area, reward, info = False, 0.0, 0.0, {}
    while not done:
        previous = env.run.used
        _, reward, done, truncated, info = env.step(1)
        share = min(info["seconds"], 5.0 - previous) / 5.0
        area = (start_loss - info["val_loss"]) * share
        assert not truncated
        total_area += area
        if not done:
            assert reward == pytest.approx(area)
    assert reward == pytest.approx(area + info["val_top1"])  # the last step adds validation top-1
    assert 5.0 <= env.run.used < 5.0 + 1.0  # over by less than one minibatch
    with pytest.raises(RuntimeError, match="budget is spent"):
        env.step(0)


def test_agentvit_reward_matches_a_hand_worked_example() -> None:
    # 64 patches: ideal 24 dropped; halfway: w_L = 0.2 + 0.8 * 0.5 = 0.6, w_P = 1 - 0.2 * 0.5 = 0.9;
    # L(0)/L(t) = 2.3 / 1.15 = 2: r = 0.6 * 2 - 0.9 * |30 - 24| / 24 = 1.2 - 0.225 = 0.975
    assert agentvit_reward(2.3, 1.15, 30, 64, 0.5) == pytest.approx(0.975)
    # at the start: w_L = 0.2, w_P = 0.8; at the ideal count only the loss term is left
    assert agentvit_reward(2.0, 2.0, 24, 64, 0.0) == pytest.approx(0.2)
    assert agentvit_reward(2.0, 1.0, 0, 64, 1.0) == pytest.approx(2.0 - 1.0)


def test_agentvit_mode_pays_every_tenth_minibatch_with_a_batch_shared_mask() -> None:
    env = make(mode="agentvit", budget=12.0)
    obs, _ = env.reset(seed=0)
    patches = env.run.num_patches
    assert obs.shape == (16, patches)
    scores = np.linspace(-1, 1, patches, dtype=np.float32)  # the top half is at or above the mean
    rewards, infos = [], []
    for _ in range(12):
        obs, reward, _, _, info = env.step(scores)
        rewards.append(reward)
        infos.append(info)
    assert [i for i, r in enumerate(rewards) if r != 0.0] == [9]
    assert all(i["kept_patches"] == patches // 2 for i in infos)
    h = env.history[9]
    expected = agentvit_reward(env.history[0]["train_loss"], h["train_loss"], h["dropped"], patches, h["budget_used"])
    assert rewards[9] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 0.0}, "budget must be a finite number > 0"),
        ({"budget": float("inf")}, "budget must be a finite number > 0"),
        ({"clock": "cycles"}, "clock must be one of"),
        ({"mode": "dqn"}, "mode must be one of"),
        ({"keep_ratios": (1.0, 0.0)}, r"keep_ratio must be in \(0, 1\]"),
        ({"keep_ratios": ()}, "keep_ratios must be a non-empty list"),
        ({"keep_ratios": (0.5, 0.5)}, "must not repeat"),
        ({"minibatches_per_step": 0}, "minibatches_per_step must be a positive integer"),
        ({"scorer": "saliency"}, "scorer must be one of"),
        ({"batch_size": 10**7}, "exceeds the"),
        ({"reward_weights": {"time": 1.0}}, "reward_weights takes the keys"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_bad_actions_and_misuse_are_clear_errors() -> None:
    env = make()
    env.reset(seed=0)
    for bad in (6, -1, 0.5, np.array([0, 1])):
        with pytest.raises(ValueError, match=r"action must be an integer index into keep_ratios"):
            env.step(bad)
    faithful = make(mode="agentvit")
    faithful.reset(seed=0)
    with pytest.raises(ValueError, match="finite scores"):
        faithful.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="reset takes no options"):
        env.reset(options={"budget": 3})


def test_fine_tuning_a_file_with_half_the_patches_learns() -> None:
    backbone = str(ASSETS_DIR / "demo-shapes.safetensors")  # the shipped backbone, its classifier re-initialised
    run = TrainingRun(RunConfig(backbone=backbone, clock="tokens", batch_size=64, val_images=512, warmup=0.0), budget=12.0)
    run.reset(0)
    run.model.vit.head.reset_parameters()
    start_loss, start_top1 = run.evaluate()
    while not run.done:
        run.train_minibatch(0.5)  # half the patches, chosen by class-token attention
    loss, top1 = run.evaluate()
    assert start_top1 < 0.3 and top1 > 0.6 and loss < start_loss - 0.5
