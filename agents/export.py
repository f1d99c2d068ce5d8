"""Trained agent (Stable-Baselines3 or ours) -> :class:`~vitskip_env.deploy.policy.SkipPolicy` for ``DynamicViT``.

The exported policy takes exactly the actions of ``model.predict(obs, deterministic=True)`` on the
same observations: the agent's own layers are copied (features extractor, actor latent network,
action head), the deterministic rule of its action distribution is reproduced bit for bit
(:func:`~vitskip_env.deploy.policy.deterministic_action`), and a ``VecNormalize`` observation
normalisation is folded in. The observation encoder and the skip rules (``min_blocks``,
``always_execute``) come from the training env's public accessor ``skip_contract()``, so
deployment sees what training saw and obeys the rules training did.

Supported agents:

- SB3 ``PPO``, ``A2C``, sb3-contrib ``TRPO`` (``ActorCriticPolicy``) and ``MaskablePPO``;
  ``DQN``, ``QRDQN`` and ``ARS`` (greedy / argmax policies). ``RecurrentPPO`` is not (its action
  depends on an LSTM state carried across blocks).
- ``agents.reinforce.Reinforce`` and any object with a ``policy`` ``nn.Module`` mapping a batch
  of observations to ``(N, 2)`` logits whose deterministic action is their argmax.
- Any object with ``skip_policy_spec() -> (net, {"decision": ...})`` (the protocol below).

Saving (``DynamicViT.save``) needs a network ``vitskip_env.deploy.netspec`` can describe: MLPs, SB3's
``FlattenExtractor`` / vector ``CombinedExtractor`` and the flat / dict extractors of
``agents/extractors.py`` are converted; the attention extractor (``obs_mode="tokens"``) and other
custom modules run in memory but raise ``NotImplementedError`` on save. An extractor can opt in by
providing ``skip_net() -> nn.Module``: a plain-torch network (netspec layers) computing the same features.

Protocol for other agents: ``skip_policy_spec()`` returns ``(net, config)`` where ``net`` maps the
observation batch as the env gives it (float32 tensor ``(N, obs_dim)``, or a dict of tensors for
``obs_mode`` ``"dict"`` / ``"tokens"``) to ``(N, 2)`` action scores (0 = skip, 1 = execute), and
``config["decision"]`` is ``"categorical"`` (``argmax(Categorical(logits=net(obs)).probs)``) or
``"argmax"`` (``net(obs).argmax(1)``); make ``predict(..., deterministic=True)`` use the same rule,
ideally by calling ``vitskip_env.deploy.policy.deterministic_action``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from torch import nn

from vitskip_env.deploy.netspec import Columns, ConcatKeys, QuantileMean, describable
from vitskip_env.deploy.policy import DECISIONS, Decision, SkipPolicy
from vitskip_env.observations import ObservationEncoder
from vitskip_env.rules import SkipContract

from .extractors import DictSkipExtractor, FlatSkipExtractor

SUPPORTED = (
    "SB3 PPO / A2C / DQN, sb3-contrib TRPO / MaskablePPO / QRDQN / ARS, agents.reinforce.Reinforce, an object with a "
    "`policy` nn.Module (observations -> (N, 2) logits) or one with skip_policy_spec() (see agents/export.py)"
)


def export_policy(model: Any, env: Any = None, *, vec_normalize: Any = None, decision: Decision | None = None) -> SkipPolicy:
    """A trained agent as a :class:`SkipPolicy` (CPU, eval mode; ``DynamicViT`` moves it to the backbone's device).

    Args:
        model: The trained agent (see the module docstring for what is supported).
        env: The env the agent was trained on, or any ViTSkip env built with the same backbone,
            ``obs_mode``, ``min_blocks`` and ``always_execute`` (a ``ViTSkipEnv``,
            ``ViTSkipVectorEnv``, ``SB3VecEnv``, ``DummyVecEnv``, possibly wrapped). ``None``: the
            model's own env (``model.get_env()``).
        vec_normalize: The ``VecNormalize`` the agent was trained under, for its observation
            statistics. ``None``: ``model.get_vec_normalize_env()`` or the first ``VecNormalize``
            wrapping ``env``, if any.
        decision: Override the deterministic rule (one of ``DECISIONS``); by default the one of
            the agent's action distribution.

    Raises:
        ValueError: No ViTSkip env found, or the agent's observation space does not match it.
        NotImplementedError: An agent or policy kind that cannot be exported (the message lists the supported ones).
    """
    contract = skip_contract(env if env is not None else _model_env(model))
    if contract is None:
        raise ValueError(
            "cannot find the ViTSkip env of this agent: pass env= (the training env, or any ViTSkip env with the same "
            "backbone, obs_mode, min_blocks and always_execute); it supplies the observation encoder and the constraints"
        )
    encoder = contract.encoder
    net, default_decision, norm_cfg = _policy_net(model)
    rule = decision or default_decision
    if rule not in DECISIONS:
        raise ValueError(f"decision must be one of {list(DECISIONS)}, got {rule!r}")
    _check_space(getattr(model, "observation_space", None), encoder)
    if vec_normalize is None:
        vec_normalize = _find_vec_normalize(model, env)
    norm = _obs_norm(vec_normalize, encoder) if vec_normalize is not None else dict(norm_cfg or {})
    net = copy.deepcopy(net).cpu()
    return SkipPolicy.from_contract(contract, net, decision=rule, **norm).eval()


# ---------------------------------------------------------------------------------------- networks
class _ActorLatent(nn.Module):
    """A custom ``mlp_extractor``'s actor branch (in memory only: not describable for saving)."""

    def __init__(self, mlp_extractor: nn.Module) -> None:
        super().__init__()
        self.mlp_extractor = mlp_extractor

    def forward(self, features: Any) -> Any:
        return self.mlp_extractor.forward_actor(features)


def _features(fe: nn.Module) -> nn.Module:
    """A features extractor as plain netspec layers when it is a known kind, else itself."""
    from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor

    skip_net = getattr(fe, "skip_net", None)
    if callable(skip_net):
        return skip_net()
    if isinstance(fe, FlattenExtractor):
        return fe.flatten
    if isinstance(fe, CombinedExtractor) and all(type(e) is nn.Flatten for e in fe.extractors.values()):
        return ConcatKeys(list(fe.extractors))
    if isinstance(fe, FlatSkipExtractor):
        # forward: head(obs[:, :D], obs[:, D:D+L], obs[:, D+L:]) = net(cat([token, block_embed(block), frac]))
        d, depth = fe.embed_dim, fe.depth
        rest = int(fe._observation_space.shape[0]) - d - depth
        return nn.Sequential(Columns([d, depth, rest], {"1": fe.head.block_embed}), fe.head.net)
    if isinstance(fe, DictSkipExtractor):
        keys = ["token", "block", "executed_frac", *fe.extra]
        return nn.Sequential(ConcatKeys(keys, {"block": fe.head.block_embed}), fe.head.net)
    return fe


def _sb3_net(policy: nn.Module) -> tuple[nn.Module, Decision]:
    from sb3_contrib.ars.policies import ARSPolicy
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
    from sb3_contrib.qrdqn.policies import QRDQNPolicy
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.torch_layers import MlpExtractor
    from stable_baselines3.dqn.policies import DQNPolicy

    space = getattr(policy, "action_space", None)
    if not isinstance(space, spaces.Discrete) or int(space.n) not in (2, 3):
        raise NotImplementedError(
            f"a skip policy has 2 discrete actions (skip, execute) or 3 with actions='skip_exit' (skip, execute, exit); "
            f"this one has {space}"
        )
    if isinstance(policy, RecurrentActorCriticPolicy):
        raise NotImplementedError(
            "recurrent policies (RecurrentPPO) carry an LSTM state across blocks, which a SkipPolicy does not hold; "
            f"supported: {SUPPORTED}"
        )
    if isinstance(policy, (ActorCriticPolicy, MaskableActorCriticPolicy)):
        mlp = policy.mlp_extractor
        latent = mlp.policy_net if type(mlp) is MlpExtractor else _ActorLatent(mlp)
        net = nn.Sequential(_features(policy.pi_features_extractor), latent, policy.action_net)
        return net, "maskable" if isinstance(policy, MaskableActorCriticPolicy) else "categorical"
    if isinstance(policy, DQNPolicy):
        q = policy.q_net
        return nn.Sequential(_features(q.features_extractor), q.q_net), "argmax"
    if isinstance(policy, QRDQNPolicy):
        q = policy.quantile_net
        head = QuantileMean(q.n_quantiles, int(space.n))
        return nn.Sequential(_features(q.features_extractor), q.quantile_net, head), "argmax"
    if isinstance(policy, ARSPolicy):
        return nn.Sequential(_features(policy.features_extractor), policy.action_net), "argmax"
    raise NotImplementedError(f"cannot export a {type(policy).__name__}; supported: {SUPPORTED}")


def _plain(net: nn.Module) -> nn.Module:
    """A custom agent's policy module, converted to netspec layers when its layout is the SB3-like one."""
    if describable(net):
        return net
    children = dict(net.named_children())
    if set(children) == {"features_extractor", "action_net"}:  # forward = action_net(features_extractor(obs))
        return nn.Sequential(_features(children["features_extractor"]), children["action_net"])
    return net


def _policy_net(model: Any) -> tuple[nn.Module, Decision, Mapping[str, Any] | None]:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.policies import BasePolicy

    if isinstance(model, BaseAlgorithm):
        return (*_sb3_net(model.policy), None)
    if isinstance(model, BasePolicy):
        return (*_sb3_net(model), None)
    spec = getattr(model, "skip_policy_spec", None)
    if callable(spec):
        net, config = spec()
        if "decision" not in config:
            raise ValueError(f"skip_policy_spec() must say the deterministic rule: config['decision'] in {list(DECISIONS)}")
        return _plain(net), config["decision"], config.get("obs_norm")
    policy = getattr(model, "policy", None)
    if isinstance(policy, nn.Module):
        return _plain(policy), "argmax", None
    if isinstance(model, nn.Module):
        return _plain(model), "argmax", None
    raise NotImplementedError(f"cannot export a {type(model).__name__}; supported: {SUPPORTED}")


# ---------------------------------------------------------------------------------------- env and statistics
def _model_env(model: Any) -> Any:
    get_env = getattr(model, "get_env", None)
    return get_env() if callable(get_env) else getattr(model, "env", None)


def skip_contract(env: Any) -> SkipContract[ObservationEncoder] | None:
    """The observation encoder and skip rules of a ViTSkip env, from its public ``skip_contract()``; ``None`` if it has none.

    Found on ``env`` itself or ``env.unwrapped`` (a ``ViTSkipEnv`` / ``ViTSkipVectorEnv``, possibly
    Gymnasium-wrapped), or through SB3's ``env_method`` (``SB3VecEnv``, ``DummyVecEnv``, ``VecNormalize``...).
    """
    if env is None:
        return None
    for obj in (env, _attr(env, "unwrapped")):
        accessor = _attr(obj, "skip_contract")
        if callable(accessor):
            return SkipContract(*accessor())
    env_method = _attr(env, "env_method")
    if callable(env_method):  # an SB3 VecEnv: ask its first sub-environment
        try:
            return SkipContract(*env_method("skip_contract", indices=[0])[0])
        except AttributeError:  # sub-environments that are not ViTSkip envs
            return None
    return None


def _attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # wrappers may raise anything from __getattr__
        return None


def _children(obj: Any) -> list[Any]:
    out = []
    for attr in ("vector_env", "venv", "unwrapped", "env"):
        try:
            child = getattr(obj, attr, None)
        except Exception:  # wrappers may raise anything from __getattr__
            child = None
        if child is not None and child is not obj:
            out.append(child)
    envs = getattr(obj, "envs", None)
    if isinstance(envs, (list, tuple)) and envs:
        out.append(envs[0])
    return out


def _walk(env: Any, depth: int = 12) -> list[Any]:
    """``env`` and what it wraps (SB3 ``venv``, Gymnasium ``env`` / ``unwrapped``, ``envs[0]``...), outermost first."""
    seen: set[int] = set()
    order, frontier = [], [env]
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            if obj is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            order.append(obj)
            nxt.extend(_children(obj))
        frontier = nxt
    return order


def _is_vec_normalize(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("obs_rms", "norm_obs", "clip_obs", "epsilon"))


def _find_vec_normalize(model: Any, env: Any) -> Any:
    getter = getattr(model, "get_vec_normalize_env", None)
    found = getter() if callable(getter) else None
    if found is None and env is not None:
        found = next((obj for obj in _walk(env) if _is_vec_normalize(obj)), None)
    return found


def _obs_norm(vn: Any, encoder: ObservationEncoder) -> dict[str, Any]:
    """``VecNormalize`` statistics as ``SkipPolicy`` arguments, laid out like the packed observation."""
    if not vn.norm_obs:
        return {}
    rms = vn.obs_rms
    norm: dict[str, Any] = {"clip_obs": float(vn.clip_obs), "epsilon": float(vn.epsilon)}
    if not isinstance(rms, Mapping):
        norm["obs_mean"] = np.asarray(rms.mean, np.float64).reshape(-1)
        norm["obs_var"] = np.asarray(rms.var, np.float64).reshape(-1)
        return norm
    mean, var = np.zeros(encoder.obs_dim), np.ones(encoder.obs_dim)
    mask = np.zeros(encoder.obs_dim, dtype=bool)
    keys = list(vn.norm_obs_keys or rms)
    start = 0
    for key, shape in encoder.parts.items():
        size = int(np.prod(shape))
        if key in keys:
            mean[start : start + size] = np.asarray(rms[key].mean, np.float64).reshape(-1)
            var[start : start + size] = np.asarray(rms[key].var, np.float64).reshape(-1)
            mask[start : start + size] = True
        start += size
    return {**norm, "obs_mean": mean, "obs_var": var, "obs_norm_mask": mask}


def _check_space(space: spaces.Space | None, encoder: ObservationEncoder) -> None:
    if space is None:
        return
    expected = encoder.space()

    def shapes(s: spaces.Space) -> Any:
        return {k: v.shape for k, v in s.spaces.items()} if isinstance(s, spaces.Dict) else s.shape

    if type(space) is not type(expected) or shapes(space) != shapes(expected):
        raise ValueError(
            f"the agent was trained on observations {shapes(space)} but this env gives {shapes(expected)} "
            f"(obs_mode={encoder.mode!r}, depth={encoder.depth}, embed_dim={encoder.embed_dim}); "
            "pass the env it was trained in"
        )
