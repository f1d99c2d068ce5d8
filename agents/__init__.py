"""Decision makers for the ViTSkip environments: RL algorithms by name, with tuned defaults.

``make_agent(name, env, **kwargs)`` builds any algorithm of :data:`ALGOS` (or ``"module:Class"``)
with the defaults of ``agents/defaults.yaml`` and the features extractor matching the env's
observation space (``agents/extractors.py``)::

    from agents import SB3VecEnv, make_agent
    env = SB3VecEnv(num_envs=256, dataset="shapes", compute_weight=0.5)
    model = make_agent("ppo", env, seed=0).learn(200_000)

Construction protocol: Stable-Baselines3 algorithms (subclasses of ``BaseAlgorithm``) are built
as ``cls(policy, env, policy_kwargs=..., **params)`` on an SB3 ``VecEnv`` (:class:`SB3VecEnv`,
optionally under ``VecMonitor`` / ``VecNormalize``); any other class (``reinforce``, your own) as
``cls(env, **params)`` on a Gymnasium vector env (an unwrapped ``SB3VecEnv`` is passed as its
native ``ViTSkipVectorEnv``). A custom class needs ``learn(total_timesteps, callback=None,
progress_bar=False)`` and SB3's ``predict(obs, state, episode_start, deterministic)``.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from gymnasium import spaces
from sb3_contrib import QRDQN, TRPO, MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from torch import nn

from .evaluation import evaluate_agent
from .extractors import extractor_for
from .reinforce import Reinforce
from .sb3_vec_env import SB3VecEnv

#: Algorithm name -> class.
ALGOS: dict[str, type] = {
    "ppo": PPO,
    "a2c": A2C,
    "maskable_ppo": MaskablePPO,
    "recurrent_ppo": RecurrentPPO,
    "trpo": TRPO,
    "qrdqn": QRDQN,
    "reinforce": Reinforce,
}
DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}
#: Policy names tried in order, by observation space kind.
_POLICY_NAMES = {"box": ("MlpPolicy", "MlpLstmPolicy"), "dict": ("MultiInputPolicy", "MultiInputLstmPolicy")}


@cache
def _load_defaults() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(DEFAULTS_FILE.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}  # `_name` entries are YAML anchors only


def algo_defaults(name: str) -> dict[str, Any]:
    """A copy of the defaults of algorithm ``name`` from ``defaults.yaml`` (``{}`` for names without any)."""
    return copy.deepcopy(_load_defaults().get(name, {}))


def resolve_algo(name: str) -> tuple[str | None, type]:
    """``(registered name or None, class)`` for an :data:`ALGOS` name or ``"module:Class"``.

    Raises:
        ValueError: Unknown name (with the closest registered one) or a ``module:Class`` that does not import.
    """
    if name in ALGOS:
        return name, ALGOS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot load algorithm {name!r}: {err}") from err
        if not inspect.isclass(cls):
            raise ValueError(f"{name!r} is not a class")
        known = next((k for k, v in ALGOS.items() if v is cls), None)
        return known, cls
    hint = difflib.get_close_matches(name.lower(), list(ALGOS), n=1)
    extra = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(f"unknown algorithm {name!r}.{extra} Registered: {sorted(ALGOS)}; or give 'module:Class'")


def make_agent(name: str, env: Any, **kwargs: Any) -> Any:
    """Build an agent by name with the tuned defaults for this env.

    Args:
        name: A key of :data:`ALGOS` or ``"module:Class"`` (e.g. ``"agents.reinforce:Reinforce"``,
            ``"stable_baselines3:DQN"``).
        env: An SB3 ``VecEnv`` (:class:`SB3VecEnv`, possibly wrapped) for SB3 algorithms; a
            Gymnasium vector env (or an unwrapped ``SB3VecEnv``) for the others.
        **kwargs: Constructor arguments overriding the defaults (``seed``, ``device``, ``verbose``,
            ``tensorboard_log``, ``learning_rate``...). ``policy_kwargs`` and ``extractor_kwargs``
            are merged key by key into the defaults; ``policy`` overrides the policy name;
            ``n_minibatches`` sets ``batch_size = n_steps * num_envs // n_minibatches`` unless
            ``batch_size`` is given.

    Returns:
        The (untrained) agent.
    """
    known, cls = resolve_algo(name)
    params = algo_defaults(known) if known else {}
    for key in ("policy_kwargs", "extractor_kwargs"):
        if key in kwargs:
            kwargs[key] = {**params.get(key, {}), **kwargs[key]}
    params.update(kwargs)
    if not (inspect.isclass(cls) and issubclass(cls, BaseAlgorithm)):
        return cls(_gymnasium_env(env, name), **params)
    if not isinstance(env, VecEnv):
        raise TypeError(
            f"{name!r} is a Stable-Baselines3 algorithm: give it an SB3 VecEnv such as agents.SB3VecEnv, got {env!r}"
        )
    return _make_sb3(cls, env, params, user_batch_size="batch_size" in kwargs)


def _make_sb3(cls: type[BaseAlgorithm], env: VecEnv, params: dict[str, Any], user_batch_size: bool) -> BaseAlgorithm:
    space = env.observation_space
    policy = params.pop("policy", None) or _policy_name(cls, space)
    policy_kwargs = dict(params.pop("policy_kwargs", None) or {})
    extractor_kwargs = params.pop("extractor_kwargs", None) or {}
    n_minibatches = params.pop("n_minibatches", None)
    if n_minibatches and not user_batch_size and "n_steps" in params:
        params["batch_size"] = max(2, params["n_steps"] * env.num_envs // int(n_minibatches))
    if isinstance(policy_kwargs.get("activation"), str):
        act = policy_kwargs.pop("activation")
        if act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        policy_kwargs["activation_fn"] = ACTIVATIONS[act]
    policy_cls = cls.policy_aliases.get(policy, policy) if isinstance(policy, str) else policy
    takes_extractor = (
        not isinstance(policy_cls, str) and "features_extractor_class" in inspect.signature(policy_cls).parameters
    )
    if takes_extractor and "features_extractor_class" not in policy_kwargs:
        policy_kwargs["features_extractor_class"] = extractor_for(space)
        policy_kwargs["features_extractor_kwargs"] = {**extractor_kwargs, **policy_kwargs.get("features_extractor_kwargs", {})}
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in params if k not in accepted]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        raise TypeError(f"{cls.__name__} does not take {unknown}; its arguments: {sorted(k for k in accepted if k != 'self')}")
    return cls(policy, env, policy_kwargs=policy_kwargs, **params)


def _policy_name(cls: type[BaseAlgorithm], space: Any) -> str:
    kind = "dict" if isinstance(space, spaces.Dict) else "box"
    for candidate in _POLICY_NAMES[kind]:
        if candidate in cls.policy_aliases:
            return candidate
    raise ValueError(
        f"{cls.__name__} has no policy for a {kind} observation space; pass policy=... (has {sorted(cls.policy_aliases)})"
    )


def _gymnasium_env(env: Any, name: str) -> Any:
    if isinstance(env, SB3VecEnv):
        return env.vector_env  # SAME_STEP autoreset: fine for Gymnasium-API algorithms
    if isinstance(env, VecEnvWrapper):
        raise TypeError(
            f"{name!r} talks to the Gymnasium vector API; give it a gymnasium VectorEnv (gym.make_vec(...) or "
            "ViTSkipVectorEnv), not an SB3 VecEnvWrapper"
        )
    return env


def load_agent(name: str, path: str | os.PathLike, env: Any = None, **kwargs: Any) -> Any:
    """Load a saved agent: ``cls.load(path, env=env, **kwargs)`` for an :data:`ALGOS` name or ``"module:Class"``.

    SB3's ``model.zip`` holds pickles, which run code when loaded: load only files you trust. To
    continue training, use :func:`agents.checkpoint.load_checkpoint` (nothing is unpickled).
    """
    _, cls = resolve_algo(name)
    if env is not None and not (inspect.isclass(cls) and issubclass(cls, BaseAlgorithm)):
        env = _gymnasium_env(env, name)
    return cls.load(path, env=env, **kwargs)


def export_policy(*args: Any, **kwargs: Any) -> Any:
    """Trained policy (SB3 or custom) -> ``SkipPolicy`` torch module (see ``agents/export.py``)."""
    from .export import export_policy as _export_policy

    return _export_policy(*args, **kwargs)


__all__ = [
    "ALGOS",
    "Reinforce",
    "SB3VecEnv",
    "algo_defaults",
    "evaluate_agent",
    "export_policy",
    "load_agent",
    "make_agent",
    "resolve_algo",
]
