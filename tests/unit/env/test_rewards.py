"""Rewards: components sum to the reward, weights, custom reward functions, cost models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitskip_env import ViTSkipEnv, ViTSkipVectorEnv
from vitskip_env.env.options import EnvOptions
from vitskip_env.env.rewards import CONFIDENCE_FLOOR, RewardContext, RewardModel, default_components
from vitskip_env.model import block_costs, flops_costs


def play(env: ViTSkipEnv, actions: list[int], seed: int = 0) -> tuple[list[float], list[dict]]:
    env.reset(seed=seed)
    rewards, infos = [], []
    for a in actions:
        _, r, _, _, info = env.step(a)
        rewards.append(r)
        infos.append(info)
    return rewards, infos


@pytest.mark.parametrize("weights", [{}, {"accuracy_weight": 2.0, "confidence_weight": 0.3, "compute_weight": 0.1}])
def test_components_sum_to_reward_and_follow_their_definition(micro_kwargs: dict, weights: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs, **weights)
    defaults = EnvOptions()
    w = {k: getattr(defaults, k) for k in ("accuracy_weight", "confidence_weight", "compute_weight")} | weights
    for seed, actions in enumerate([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]):
        rewards, infos = play(env, actions, seed)
        for r, info in zip(rewards, infos, strict=True):
            assert set(info["reward_components"]) == {"correct", "confidence", "compute"}
            assert sum(info["reward_components"].values()) == pytest.approx(r, abs=1e-6)
        last = infos[-1]
        compute = sum(i["reward_components"]["compute"] for i in infos)
        assert compute == pytest.approx(-w["compute_weight"] * last["compute_ratio"], abs=1e-6)
        assert last["reward_components"]["correct"] == w["accuracy_weight"] * last["correct"]
        assert all(i["reward_components"]["correct"] == 0.0 for i in infos[:-1])
        # confidence: the log-probability of the true class under the same execute mask.
        k = last["image_index"]
        with torch.no_grad():
            x = env.dataset.normalize(env.dataset.images[k : k + 1])
            logp = torch.log_softmax(env.backbone(x, execute_mask=torch.tensor([actions], dtype=torch.bool)), 1)
        expected = max(float(logp[0, last["label"]]), CONFIDENCE_FLOOR) * w["confidence_weight"]
        assert last["reward_components"]["confidence"] == pytest.approx(expected, abs=1e-5)


def test_executing_everything_costs_compute_weight(micro_kwargs: dict) -> None:
    rewards, infos = play(ViTSkipEnv(**micro_kwargs, compute_weight=0.8), [1, 1, 1, 1])
    assert sum(i["reward_components"]["compute"] for i in infos) == pytest.approx(-0.8)
    rewards, infos = play(ViTSkipEnv(**micro_kwargs, compute_weight=0.8), [0, 0, 0, 0])
    assert rewards[:3] == [0.0, 0.0, 0.0]


def test_custom_reward_fn(micro_kwargs: dict) -> None:
    def depth_bonus(ctx: RewardContext) -> dict[str, torch.Tensor]:
        comps = default_components(ctx)
        comps["late"] = ctx.actions.float() * (ctx.block / ctx.depth)
        return comps

    venv = ViTSkipVectorEnv(2, **micro_kwargs, reward_fn=depth_bonus, compute_weight=0.0)
    venv.reset(seed=0)
    for block in range(4):
        _, rewards, _, _, infos = venv.step(np.array([1, 0]))
        comps = infos["reward_components"]
        assert comps["late"].tolist() == [block / 4, 0.0]  # extra components have weight 1
        total = comps["correct"] + comps["confidence"] + comps["compute"] + comps["late"]
        np.testing.assert_allclose(total, rewards, atol=1e-6)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda ctx: {"a": torch.zeros(3)}, r"shape \(1,\)"),
        (lambda ctx: {"a": 1.0}, r"must be a tensor"),
        (lambda ctx: {"a" if ctx.block == 0 else "b": torch.zeros(1)}, "same components"),
    ],
)
def test_bad_reward_fn_output_is_explained(micro_kwargs: dict, fn: object, match: str) -> None:
    env = ViTSkipEnv(**micro_kwargs, reward_fn=fn)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(1)
        env.step(1)


def test_weights_must_be_finite_numbers(micro_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="finite number"):
        ViTSkipEnv(**micro_kwargs, compute_weight=math.inf)
    with pytest.raises(ValueError, match="finite number"):
        ViTSkipEnv(**micro_kwargs, accuracy_weight="1")


def test_cost_models(micro_kwargs: dict) -> None:
    env = ViTSkipEnv(**micro_kwargs)
    flops = flops_costs(env.backbone)
    assert flops.sum().item() == pytest.approx(1.0) and torch.allclose(flops, torch.full((4,), 0.25, dtype=torch.float64))
    latency = block_costs(env.backbone, "latency")
    assert latency.dtype == torch.float32 and latency.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (latency > 0).all()
    env = ViTSkipEnv(**micro_kwargs, cost_model="latency")
    _, infos = play(env, [1, 1, 0, 0])
    assert infos[-1]["compute_ratio"] == pytest.approx(float(env.core.costs[:2].sum()), abs=1e-6)


def test_episode_replay_is_the_sum_of_the_env_step_rewards(micro_kwargs: dict) -> None:
    """``RewardModel.episode`` (NSGA-II's joint fitness) gives the env's returns, custom components included."""

    def depth_bonus(ctx: RewardContext) -> dict[str, torch.Tensor]:
        comps = default_components(ctx)
        comps["late"] = ctx.actions.float() * (ctx.block / ctx.depth)
        comps["end"] = torch.full_like(comps["late"], float(ctx.block) if ctx.terminal else 0.0)
        return comps

    weights = {"accuracy_weight": 2.0, "confidence_weight": 0.3, "compute_weight": 0.1}
    venv = ViTSkipVectorEnv(3, **micro_kwargs, reward_fn=depth_bonus, **weights)
    venv.reset(seed=0)
    returns = np.zeros(3)
    for actions in ([1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0]):
        _, rewards, _, _, infos = venv.step(np.array(actions))
        returns += rewards
    executed = torch.as_tensor(np.asarray(infos["executed_mask"]))
    labels = torch.as_tensor(np.asarray(infos["label"]))
    ds = venv.dataset
    with torch.no_grad():
        x = ds.normalize(ds.images[torch.as_tensor(np.asarray(infos["image_index"]))])
        logits = venv.backbone(x, execute_mask=executed)
    model = RewardModel({"correct": 2.0, "confidence": 0.3, "compute": 0.1}, depth_bonus)
    total, parts = model.episode(executed, logits, labels, block_costs(venv.backbone))
    assert total.dtype == torch.float64 and set(parts) == {"correct", "confidence", "compute", "late", "end"}
    np.testing.assert_allclose(total.numpy(), returns, atol=1e-5)
    np.testing.assert_allclose(sum(parts.values()).numpy(), total.numpy())
    late = (executed.double() * torch.arange(4, dtype=torch.float64) / 4).sum(1)
    assert torch.allclose(parts["late"], late) and (parts["end"] == 3.0).all()
