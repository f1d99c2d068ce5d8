"""export_policy: the exported SkipPolicy takes exactly the actions of model.predict(obs, deterministic=True)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import ARS, QRDQN, TRPO, MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from torch import nn

from agents.export import export_policy, skip_contract
from agents.extractors import policy_kwargs_for
from vitskip_env import DynamicViT, SkipPolicy, ViTSkipVectorEnv

ALGOS: dict[str, tuple[type, dict[str, Any]]] = {
    "ppo": (PPO, {"n_steps": 8, "batch_size": 8}),
    "a2c": (A2C, {"n_steps": 8}),
    "trpo": (TRPO, {"n_steps": 8, "batch_size": 8}),
    "maskable_ppo": (MaskablePPO, {"n_steps": 8, "batch_size": 8}),
    "dqn": (DQN, {"buffer_size": 64, "learning_starts": 0}),
    "qrdqn": (QRDQN, {"buffer_size": 64, "learning_starts": 0, "policy_kwargs": {"n_quantiles": 5}}),
    "ars": (ARS, {"n_delta": 2}),
}


def single_env(kwargs: dict) -> DummyVecEnv:
    return DummyVecEnv([lambda: gym.make("ViTSkip-Shapes-v0", **kwargs)])


def rollout_obs(kwargs: dict, n: int = 16, seed: int = 0) -> tuple[Any, np.ndarray]:
    """Observations of every block of ``n`` episodes under random actions, and the action masks there."""
    venv = ViTSkipVectorEnv(n, **{**kwargs, "sampling": "sequential"})
    rng = np.random.default_rng(seed)
    obs, _ = venv.reset(seed=seed)
    seen, masks = [obs], [venv.action_masks()]
    for _ in range(venv.backbone.depth - 1):
        obs, *_ = venv.step(rng.integers(0, 2, n))
        seen.append(obs)
        masks.append(venv.action_masks())
    if isinstance(obs, dict):
        return {k: np.concatenate([o[k] for o in seen]) for k in obs}, np.concatenate(masks)
    return np.concatenate(seen), np.concatenate(masks)


def output_layer(model: Any) -> nn.Linear:
    policy = model.policy
    layer = getattr(policy, "action_net", None)
    if layer is None:
        layer = policy.q_net.q_net if hasattr(policy, "q_net") else policy.quantile_net.quantile_net
    return layer[-1] if isinstance(layer, nn.Sequential) else layer


def diversify(model: Any, obs: Any, scale: float = 30.0) -> None:
    """Scale the output layer and move its threshold between two observed score gaps, so both actions occur.

    At initialisation SB3's action head gives logits within ~1e-3 of each other (a good test of
    near-ties, but every observation gets the same action).
    """
    layer = output_layer(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for param in model.policy.parameters():  # ARS starts from all zeros
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
        layer.weight.mul_(scale)
        layer.bias.mul_(scale)
        exported = export_policy(model, model.get_env() or model.env)
        scores = exported.logits(exported.pack_numpy(obs)[0])
        gaps = np.unique((scores[:, 1] - scores[:, 0]).numpy())
        mid = len(gaps) // 2
        layer.bias.view(-1, 2)[:, 1] -= float(gaps[mid - 1] + gaps[mid]) / 2  # QR-DQN: every quantile of action 1


def assert_same_actions(model: Any, exported: SkipPolicy, obs: Any, **kw: Any) -> np.ndarray:
    want, _ = model.predict(obs, deterministic=True, **kw)
    got, _ = exported.predict(obs, **kw)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    return got


@pytest.mark.parametrize("extractor", ["mlp", "skip"])
@pytest.mark.parametrize("algo", list(ALGOS))
def test_export_equals_predict(algo: str, extractor: str, micro_kwargs: dict, tmp_path: Path) -> None:
    if algo == "ars" and extractor == "skip":
        pytest.skip("ARS policies take no features extractor")
    cls, params = ALGOS[algo]
    env = single_env(micro_kwargs)
    params = dict(params)
    if extractor == "skip":
        params["policy_kwargs"] = {**params.get("policy_kwargs", {}), **policy_kwargs_for(env.observation_space)}
    model = cls("MlpPolicy", env, seed=0, **params)
    obs, _ = rollout_obs(micro_kwargs)
    assert_same_actions(model, export_policy(model), obs)  # as initialised: logits within ~1e-3, near-ties
    diversify(model, obs)
    exported = export_policy(model)
    actions = assert_same_actions(model, exported, obs)
    assert 0 < actions.sum() < len(actions)
    # Saved inside a DynamicViT and loaded back (plain torch layers): still the same actions.
    path = DynamicViT(env.envs[0].unwrapped.backbone, exported).save(tmp_path / "dyn.safetensors")
    assert_same_actions(model, DynamicViT.load(path).policy, obs)


def test_maskable_ppo_with_constraints_end_to_end(micro_kwargs: dict) -> None:
    """Masked predictions match, and DynamicViT reproduces the env episode driven by model.predict."""
    kwargs = {**micro_kwargs, "min_blocks": 2, "always_execute": (0,)}
    model = MaskablePPO("MlpPolicy", single_env(kwargs), n_steps=8, batch_size=8, seed=1)
    obs, masks = rollout_obs(kwargs)
    diversify(model, obs)
    exported = export_policy(model)
    assert exported.min_blocks == 2 and exported.always_execute == frozenset({0}) and exported.decision == "maskable"
    assert not masks[:, 0].all()
    assert_same_actions(model, exported, obs, action_masks=masks)
    assert_same_actions(model, exported, obs)

    n = 16
    venv = ViTSkipVectorEnv(n, **{**kwargs, "sampling": "sequential"})
    obs, _ = venv.reset(seed=0)
    for _ in range(venv.backbone.depth):
        actions, _ = model.predict(obs, deterministic=True, action_masks=venv.action_masks())
        obs, _, _, _, infos = venv.step(actions)
    ds = venv.dataset
    with torch.inference_mode():
        logits, mask = DynamicViT(venv.backbone, exported)(ds.normalize(ds.images[:n]), return_mask=True)
    assert np.array_equal(mask.numpy(), infos["executed_mask"])
    assert np.array_equal(logits.argmax(1).numpy(), infos["prediction"])


def _normalised_env(kwargs: dict, **vn_kwargs: Any) -> VecNormalize:
    env = VecNormalize(single_env(kwargs), norm_reward=False, **vn_kwargs)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(24):  # move the running statistics away from (0, 1)
        env.step(rng.integers(0, 2, (1,)))
    return env


@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
def test_vec_normalize_statistics_are_folded_in(obs_mode: str, micro_kwargs: dict) -> None:
    kwargs = {**micro_kwargs, "obs_mode": obs_mode}
    vn_kwargs = {"norm_obs_keys": ["token", "executed_frac"]} if obs_mode == "dict" else {}
    env = _normalised_env(kwargs, **vn_kwargs)
    policy = "MultiInputPolicy" if obs_mode == "dict" else "MlpPolicy"
    model = PPO(policy, env, n_steps=8, batch_size=8, seed=2)
    obs, _ = rollout_obs(kwargs)
    diversify(model, obs)
    exported = export_policy(model)  # finds model.get_vec_normalize_env()
    assert exported.normalized and exported.has_norm_mask == (obs_mode == "dict")
    want, _ = model.predict(env.normalize_obs(obs), deterministic=True)
    got, _ = exported.predict(obs)
    assert np.array_equal(got, want) and 0 < want.sum() < len(want)
    explicit = export_policy(model, env.venv, vec_normalize=env)
    assert np.array_equal(explicit.predict(obs)[0], want)


@pytest.mark.parametrize("obs_mode", ["dict", "tokens"])
def test_dict_and_token_extractors(obs_mode: str, micro_kwargs: dict, tmp_path: Path) -> None:
    kwargs = {**micro_kwargs, "obs_mode": obs_mode}
    env = single_env(kwargs)
    extractor = policy_kwargs_for(env.observation_space)
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, seed=3, policy_kwargs=extractor)
    obs, _ = rollout_obs(kwargs)
    diversify(model, obs)
    exported = export_policy(model)
    assert_same_actions(model, exported, obs)
    dyn = DynamicViT(env.envs[0].unwrapped.backbone, exported)
    if obs_mode == "dict":
        assert_same_actions(model, DynamicViT.load(dyn.save(tmp_path / "d.safetensors")).policy, obs)
    else:  # the attention extractor runs in memory but has no plain-layer description
        with pytest.raises(NotImplementedError, match="TokenSkipExtractor"):
            dyn.save(tmp_path / "d.safetensors")


def test_reinforce_agent(micro_kwargs: dict, tmp_path: Path) -> None:
    reinforce = pytest.importorskip("agents.reinforce")
    venv = ViTSkipVectorEnv(4, **micro_kwargs)
    agent = reinforce.Reinforce(venv, seed=0, device="cpu")
    obs, _ = rollout_obs(micro_kwargs)
    diversify(agent, obs)
    exported = export_policy(agent)
    actions = assert_same_actions(agent, exported, obs)
    assert 0 < actions.sum() < len(actions)
    path = DynamicViT(venv.backbone, exported).save(tmp_path / "r.safetensors")
    assert_same_actions(agent, DynamicViT.load(path).policy, obs)


class ProtocolAgent:
    """The smallest custom agent: a network and ``skip_policy_spec()``."""

    def __init__(self, obs_dim: int, decision: str | None) -> None:
        torch.manual_seed(4)
        self.net = nn.Sequential(nn.Linear(obs_dim, 8), nn.ReLU(), nn.Linear(8, 2))
        self.decision = decision

    def skip_policy_spec(self) -> tuple[nn.Module, dict[str, Any]]:
        return self.net, ({"decision": self.decision} if self.decision else {})

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        with torch.no_grad():
            logits = self.net(torch.as_tensor(obs))
        return torch.distributions.Categorical(logits=logits).probs.argmax(1).numpy(), None


def test_custom_agent_protocol_and_errors(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(2, **micro_kwargs)
    obs, _ = rollout_obs(micro_kwargs)
    agent = ProtocolAgent(venv.core.encoder.obs_dim, "categorical")
    assert_same_actions(agent, export_policy(agent, venv), obs)
    with pytest.raises(ValueError, match="decision"):
        export_policy(ProtocolAgent(venv.core.encoder.obs_dim, None), venv)
    with pytest.raises(ValueError, match="env="):
        export_policy(agent)
    recurrent = RecurrentPPO("MlpLstmPolicy", single_env(micro_kwargs), n_steps=8, batch_size=8)
    with pytest.raises(NotImplementedError, match="LSTM"):
        export_policy(recurrent)
    flat_model = PPO("MlpPolicy", single_env(micro_kwargs), n_steps=8, batch_size=8)
    with pytest.raises(ValueError, match="trained on observations"):
        export_policy(flat_model, ViTSkipVectorEnv(2, **{**micro_kwargs, "obs_mode": "dict"}))


def test_default_agent_on_the_sb3_adapter(micro_kwargs: dict, tmp_path: Path) -> None:
    """The project's own pipeline: make_agent defaults (block-embedding extractor) on SB3VecEnv under VecNormalize."""
    agents = pytest.importorskip("agents")
    env = VecNormalize(agents.SB3VecEnv(num_envs=4, **micro_kwargs), norm_reward=False)
    env.reset()
    for _ in range(12):
        env.step(np.ones(4, dtype=np.int64))
    model = agents.make_agent("ppo", env, seed=0)
    obs, _ = rollout_obs(micro_kwargs)
    diversify(model, obs)
    exported = export_policy(model)  # env and statistics found through VecNormalize -> SB3VecEnv -> ViTSkipVectorEnv
    want, _ = model.predict(env.normalize_obs(obs), deterministic=True)
    assert np.array_equal(exported.predict(obs)[0], want) and 0 < want.sum() < len(want)
    loaded = DynamicViT.load(DynamicViT(env.venv.backbone, exported).save(tmp_path / "dyn.safetensors"))
    assert np.array_equal(loaded.policy.predict(obs)[0], want)


def test_the_encoder_and_rules_come_from_the_public_accessor(micro_kwargs: dict) -> None:
    """export reads ``skip_contract()`` (directly, through ``unwrapped`` or SB3's ``env_method``) and nothing else."""
    agents = pytest.importorskip("agents")
    kwargs = {**micro_kwargs, "min_blocks": 2, "always_execute": (1,)}
    venv = ViTSkipVectorEnv(2, **kwargs)
    expected = venv.skip_contract()
    sources = {
        "vector env": venv,
        "wrapped env": gym.make("ViTSkip-Shapes-v0", **kwargs),
        "DummyVecEnv": single_env(kwargs),
        "VecNormalize(SB3VecEnv)": VecNormalize(agents.SB3VecEnv(num_envs=2, **kwargs)),
    }
    for name, env in sources.items():
        encoder, rules = skip_contract(env)
        assert rules == expected.rules and encoder.config() == expected.encoder.config(), name

    class OnlyTheAccessor:  # no core, no backbone: the accessor is all export needs
        def skip_contract(self) -> tuple:
            return expected

    agent = ProtocolAgent(expected.encoder.obs_dim, "categorical")
    exported = export_policy(agent, OnlyTheAccessor())
    assert exported.rules is expected.rules and exported.encoder is expected.encoder
    assert skip_contract(DummyVecEnv([lambda: gym.make("CartPole-v1")])) is None
    with pytest.raises(ValueError, match="env="):
        export_policy(agent, DummyVecEnv([lambda: gym.make("CartPole-v1")]))


@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
def test_skip_exit_agent_exports_to_a_skip_exit_vit(obs_mode: str, micro_kwargs: dict, tmp_path: Path) -> None:
    """A 3-action PPO (block-embedding extractor over the exit entry too) exports exactly, and its SkipExitViT
    reproduces the env's episodes driven by ``model.predict``."""
    agents = pytest.importorskip("agents")
    from vitskip_env import SkipExitViT

    kwargs = {**micro_kwargs, "actions": "skip_exit", "exits": "linear", "obs_mode": obs_mode}
    env = agents.SB3VecEnv(num_envs=4, **kwargs)
    model = agents.make_agent("ppo", env, seed=0)
    with torch.no_grad():  # spread the actions: skips, executions and exits all occur
        g = torch.Generator().manual_seed(1)
        for param in model.policy.action_net.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 2.0)
    exported = export_policy(model)
    assert exported.n_actions == 3
    result = agents.evaluate_agent(model, {**kwargs, "backbone": env.backbone, "exits": env.exit_heads}, 32,
                                   num_envs=16, return_episodes=True)  # fmt: skip
    ep = result["episodes"]
    assert len(set(ep["exit_block"].tolist())) >= 2 and 0 < ep["executed_mask"].mean() < 1
    model_file = SkipExitViT(env.backbone, env.exit_heads, exported).save(tmp_path / "skip_exit.safetensors")
    deployed = SkipExitViT.load(model_file)
    ds = env.dataset
    images = ds.normalize(ds.images[torch.from_numpy(ep["image_index"])])
    for batch in (images, images[:1], images[5:7]):  # torch path (32), NumPy path (1, 2)
        n = batch.shape[0]
        start = 0 if n == 32 else (0 if n == 1 else 5)
        logits, mask, left = deployed(batch, return_mask=True, return_exits=True)
        np.testing.assert_array_equal(logits.argmax(1).numpy(), ep["prediction"][start : start + n])
        np.testing.assert_array_equal(mask.numpy(), ep["executed_mask"][start : start + n])
        np.testing.assert_array_equal(left.numpy(), ep["exit_block"][start : start + n])
