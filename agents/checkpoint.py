"""Resumable checkpoints that load without running any code from the files.

A checkpoint folder holds three files, the last written being the one that points to the others:

* ``state-<token>.pt``: parameters, optimizer states, torch generator states, the env's episodes in
  flight... plain tensors and containers, read with ``torch.load(weights_only=True)``;
* ``arrays-<token>.npz``: NumPy arrays (last observations, replay buffer, NumPy generator key...),
  read with ``np.load(allow_pickle=False)``;
* ``checkpoint.json``: the format, the algorithm *name*, step counters, hyper-parameters and
  generator states as JSON, and the SHA-256 of the two files above.

Nothing is unpickled and no module is imported by a name read from these files: the agent is
rebuilt by :func:`agents.make_agent` from an :data:`agents.ALGOS` name (a ``module:Class``
algorithm must be named again by the caller) and the recorded arguments, then the state is
copied into it. Older checkpoints (SB3 ``model.zip`` / ``*.pkl``, which run code when loaded) are
refused with an explanation.

Taken at a rollout boundary (:class:`~agents.callbacks.SkipCheckpointCallback` does), a
checkpoint holds everything that decides the rest of the run on CPU: resuming it gives the same
parameters as the uninterrupted run.
"""

from __future__ import annotations

import collections
import inspect
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from vitskip_env.files import atomic_path, atomic_write_text

from .checkpoint_files import CHECKPOINT_META, CheckpointError, read_parts, sha256_of
from .run_state import Parts, capture_env, capture_rng, find_vec_normalize, restore_env, restore_rng

FORMAT = "vitskip-checkpoint/2"
#: Step counters and progress of SB3 algorithms, restored as they were.
SB3_COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_n_calls", "_current_progress_remaining", "exploration_rate")
#: Plain attributes that may differ between the original and the resumed agent.
_FREE = frozenset({"verbose", "tensorboard_log", "start_time", "num_timesteps", "exploration_rate"})
#: Agent arguments :func:`load_checkpoint` never takes from ``checkpoint.json`` (pass them yourself).
_NOT_FROM_FILE = frozenset({"tensorboard_log"})


def _plain_attributes(model: Any) -> dict[str, Any]:
    """The public attributes of ``model`` holding a plain number, string, bool or None (its hyper-parameters)."""
    out = {}
    for key, value in vars(model).items():
        if key.startswith("_") or key in _FREE:
            continue
        if isinstance(value, (bool, int, str, type(None))) or (isinstance(value, float) and math.isfinite(value)):
            out[key] = value
    return out


def algo_label(model: Any) -> str:
    """The :data:`agents.ALGOS` name of ``model``'s class, else its ``module:Class``."""
    from . import ALGOS

    cls = type(model)
    return next((k for k, v in ALGOS.items() if v is cls), f"{cls.__module__}:{cls.__qualname__}")


# ---------------------------------------------------------------------------- capture
def _obs_arrays(prefix: str, obs: Any, parts: Parts) -> None:
    if isinstance(obs, dict):
        parts.json[prefix] = {"dict": sorted(obs)}
        parts.arrays.update({f"{prefix}/{k}": np.asarray(v) for k, v in obs.items()})
    elif obs is not None:
        parts.json[prefix] = {"array": True}
        parts.arrays[prefix] = np.asarray(obs)


def _obs_from(prefix: str, parts: Parts) -> Any:
    info = parts.json.get(prefix)
    if info is None:
        return None
    if "dict" in info:
        return {k: parts.arrays[f"{prefix}/{k}"].copy() for k in info["dict"]}
    return parts.arrays[prefix].copy()


def capture_agent(model: Any) -> Parts:
    """Parameters, optimizer state, counters and rollout state of an SB3 algorithm or :class:`~agents.Reinforce`."""
    from .reinforce import Reinforce

    parts = Parts()
    parts.json["hyperparameters"] = _plain_attributes(model)
    if isinstance(model, BaseAlgorithm):
        parts.tensors["parameters"] = model.get_parameters()
        parts.json["counters"] = {k: getattr(model, k) for k in SB3_COUNTERS if hasattr(model, k)}
        for name in ("_last_obs", "_last_episode_starts", "_last_original_obs"):
            _obs_arrays(name, getattr(model, name, None), parts)
        lstm = getattr(model, "_last_lstm_states", None)
        if lstm is not None:
            parts.tensors["lstm"] = {"pi": list(lstm.pi), "vf": list(lstm.vf)}
        buffers = {"ep_info_buffer": model.ep_info_buffer, "ep_success_buffer": model.ep_success_buffer}
        parts.json["buffers"] = {
            k: None if v is None else [_plain_json(x) for x in v] for k, v in buffers.items()
        }  # fmt: skip
        buffer = getattr(model, "replay_buffer", None)
        if buffer is not None:
            parts.merge("replay", _capture_replay(buffer))
    elif isinstance(model, Reinforce):
        parts.json["config"] = _plain_json(model.config)
        parts.json["counters"] = {"num_timesteps": int(model.num_timesteps)}
        parts.tensors.update({"policy": model.policy.state_dict(), "baseline": model.baseline.detach().cpu(),
                              "optimizer": model.optimizer.state_dict()})  # fmt: skip
        _obs_arrays("_obs", model._obs, parts)
        parts.arrays.update({"_t": model._t.copy(), "_resetting": model._resetting.copy()})
    else:
        raise TypeError(
            f"cannot checkpoint a {type(model).__name__}: checkpoints support Stable-Baselines3 algorithms and "
            "agents.Reinforce; save your own agent with its own format"
        )
    return parts


def _plain_json(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into JSON numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _capture_replay(buffer: Any) -> Parts:
    p = Parts({"pos": int(buffer.pos), "full": bool(buffer.full), "arrays": []})
    for key, value in vars(buffer).items():
        if isinstance(value, np.ndarray):
            p.arrays[key] = value
            p.json["arrays"].append(key)
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            p.arrays.update({f"{key}/{k}": v for k, v in value.items()})
            p.json["arrays"].append(key)
    return p


def _restore_replay(buffer: Any, p: Parts) -> None:
    for key in p.json["arrays"]:
        current = getattr(buffer, key)
        pairs = [(f"{key}/{k}", current, k) for k in current] if isinstance(current, dict) else [(key, None, None)]
        for name, holder, sub in pairs:
            saved = p.arrays[name]
            target = holder[sub] if holder is not None else current
            if saved.shape != target.shape:
                raise CheckpointError(f"replay buffer {name} has shape {saved.shape}, the agent's has {target.shape}")
            target[...] = saved
    buffer.pos, buffer.full = int(p.json["pos"]), bool(p.json["full"])


def restore_agent(model: Any, parts: Parts) -> None:
    """Copy what :func:`capture_agent` recorded into a freshly built agent of the same class and settings."""
    from .reinforce import Reinforce

    recorded, current = parts.json["hyperparameters"], _plain_attributes(model)
    differ = sorted(k for k in recorded.keys() & current.keys() if recorded[k] != current[k])
    if differ:
        detail = ", ".join(f"{k}={recorded[k]!r} (now {current[k]!r})" for k in differ)
        raise CheckpointError(f"the checkpoint was made with {detail}: rebuild the agent with the original arguments")
    if isinstance(model, BaseAlgorithm):
        model.set_parameters(parts.tensors["parameters"], exact_match=True, device=model.device)
        counters = parts.json["counters"]
        unknown = sorted(set(counters) - set(SB3_COUNTERS))
        if unknown:  # a file may set the step counters, never other attributes (n_epochs, gamma, policy...)
            raise CheckpointError(f"the checkpoint's counters hold {unknown}, which are not step counters {SB3_COUNTERS}")
        for key, value in counters.items():
            setattr(model, key, value)
        for name in ("_last_obs", "_last_episode_starts", "_last_original_obs"):
            value = _obs_from(name, parts)
            if value is not None:
                setattr(model, name, value)
        if "lstm" in parts.tensors and getattr(model, "_last_lstm_states", None) is not None:
            kind, lstm = type(model._last_lstm_states), parts.tensors["lstm"]
            pi, vf = (tuple(t.to(model.device) for t in lstm[k]) for k in ("pi", "vf"))
            model._last_lstm_states = kind(pi, vf)
        window = getattr(model, "_stats_window_size", 100)
        for key, items in parts.json["buffers"].items():
            setattr(model, key, None if items is None else collections.deque(items, maxlen=window))
        if "replay" in parts.json:
            _restore_replay(model.replay_buffer, parts.sub("replay"))
    elif isinstance(model, Reinforce):
        model.policy.load_state_dict(parts.tensors["policy"])
        with torch.no_grad():
            model.baseline.copy_(parts.tensors["baseline"])
        model.optimizer.load_state_dict(parts.tensors["optimizer"])
        model.num_timesteps = int(parts.json["counters"]["num_timesteps"])
        model._obs = _obs_from("_obs", parts)
        model._t, model._resetting = parts.arrays["_t"].copy(), parts.arrays["_resetting"].copy()


# ---------------------------------------------------------------------------- files
def save_checkpoint(
    model: Any, directory: str | os.PathLike, *, agent_kwargs: dict[str, Any] | None = None, extra: dict | None = None
) -> Path:
    """Write everything needed to resume training to ``directory`` (replacing its previous checkpoint).

    Args:
        model: An SB3 algorithm or :class:`~agents.Reinforce`, ideally between two updates.
        directory: The checkpoint folder.
        agent_kwargs: The JSON-able keyword arguments the agent was built with by :func:`agents.make_agent`
            (recorded so that :func:`load_checkpoint` rebuilds it the same way).
        extra: More JSON to record (``checkpoint.json["extra"]``).

    Returns:
        The path of ``checkpoint.json``. The previous checkpoint stays readable until it is replaced.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = Parts()
    parts.merge("agent", capture_agent(model))
    parts.merge("rng", capture_rng())
    env = model.get_env() if hasattr(model, "get_env") else None
    parts.merge("env", capture_env(env))
    token = secrets.token_hex(4)
    files = {"state": f"state-{token}.pt", "arrays": f"arrays-{token}.npz"}
    with atomic_path(directory / files["state"]) as tmp:
        torch.save(parts.tensors, tmp)
    with atomic_path(directory / files["arrays"]) as tmp, open(tmp, "wb") as f:
        np.savez(f, **parts.arrays)
    meta = {
        "format": FORMAT,
        "algo": algo_label(model),
        "num_timesteps": int(model.num_timesteps),
        "agent_kwargs": _plain_json(agent_kwargs or {}),
        "files": files,
        "sha256": {k: sha256_of(directory / v) for k, v in files.items()},
        "state": parts.json,
        "extra": extra or {},
    }
    atomic_write_text(directory / CHECKPOINT_META, json.dumps(meta, indent=1) + "\n")
    for old in [*directory.glob("state-*.pt"), *directory.glob("arrays-*.npz")]:
        if old.name not in files.values():
            old.unlink(missing_ok=True)
    return directory / CHECKPOINT_META


def read_checkpoint_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``checkpoint.json`` of ``directory``, checked to be of the safe format.

    Raises:
        FileNotFoundError: No checkpoint there.
        CheckpointError: An old checkpoint (pickled files) or an unreadable one.
    """
    directory = Path(directory)
    path = directory / CHECKPOINT_META
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {directory} (missing {CHECKPOINT_META}); nothing to resume")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({type(err).__name__}: {err}); the checkpoint is damaged") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a {FORMAT} checkpoint: it comes from an older version whose model.zip / *.pkl files run code "
            "when loaded, so it is not loaded. Start a new run; if you trust the folder, load its model.zip yourself "
            "with Stable-Baselines3 (e.g. PPO.load)"
        )
    steps, algo, state = meta.get("num_timesteps"), meta.get("algo"), meta.get("state")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0 and isinstance(algo, str)) or not (
        isinstance(state, dict) and all(isinstance(state.get(k), dict) for k in ("agent", "rng", "env"))
    ):
        raise CheckpointError(f"{path} lacks a step count, an algorithm name or the recorded state; it is damaged")
    return meta


def check_algo(meta: dict[str, Any], algo: str | None) -> str:
    """The algorithm to rebuild: the recorded :data:`agents.ALGOS` name, or ``algo`` given by the caller.

    A ``module:Class`` algorithm is never imported from the checkpoint: the caller must name it
    (``algo``), and it must be the recorded one.

    Raises:
        CheckpointError: A ``module:Class`` not confirmed by the caller, or an ``algo`` differing from the recorded one.
    """
    from . import resolve_algo

    recorded = str(meta.get("algo", ""))
    if algo is None:
        from . import ALGOS

        if recorded not in ALGOS:
            raise CheckpointError(
                f"the checkpoint was made by algorithm {recorded!r}, which is not a registered name: a module:Class is "
                f"never imported from a file; pass it yourself (--algo {recorded}) to resume"
            )
        return recorded
    known, cls = resolve_algo(algo)
    if (known or f"{cls.__module__}:{cls.__qualname__}") != recorded and algo != recorded:
        raise CheckpointError(
            f"the checkpoint was made by algorithm {recorded!r}, not {algo!r}; resume with --algo {recorded}"
        )
    return algo


def restore_checkpoint(model: Any, directory: str | os.PathLike, *, algo: str | None = None) -> dict[str, Any]:
    """Copy the checkpoint of ``directory`` into ``model`` (built as the original, on an env built as the original).

    Restores parameters, optimizer, counters, the rollout in flight, random generators and the env's
    state. Returns ``checkpoint.json``.
    """
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    name = check_algo(meta, algo)
    if algo_label(model) != meta["algo"]:
        raise CheckpointError(f"the checkpoint holds a {meta['algo']!r} agent, not a {algo_label(model)!r} one ({name})")
    parts = read_parts(directory, meta)
    try:
        restore_agent(model, parts.sub("agent"))
        env = model.get_env() if hasattr(model, "get_env") else None
        restore_env(env, parts.sub("env"))
        restore_rng(parts.sub("rng"))
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RuntimeError) as err:
        detail = f"missing entry {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise CheckpointError(f"the checkpoint in {directory} cannot be restored ({detail})") from err
    return meta


def load_checkpoint(directory: str | os.PathLike, env: Any = None, *, algo: str | None = None, **kwargs: Any) -> Any:
    """Rebuild the agent of a checkpoint, ready for ``model.learn(rest, reset_num_timesteps=False)``.

    Args:
        directory: The checkpoint folder.
        env: The training env built as for the original run, *without* ``VecNormalize``: if the
            checkpoint has ``VecNormalize`` statistics, the env is wrapped with them here.
        algo: Required when the checkpoint's algorithm is a ``module:Class`` (never imported from the file).
        **kwargs: Arguments of :func:`agents.make_agent` overriding the recorded ones (``device``...);
            ``tensorboard_log`` is never taken from the file, give it here.
    """
    from . import make_agent, resolve_algo

    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    name = check_algo(meta, algo)
    settings = meta["state"]["env"].get("vec_normalize", {}).get("settings")
    if settings is not None and env is not None:
        if isinstance(env, VecEnv) and find_vec_normalize(env) is not None:
            raise ValueError("pass the env without VecNormalize: load_checkpoint restores it from the checkpoint")
        env = VecNormalize(env, **settings)
    agent = meta["state"]["agent"]
    _, cls = resolve_algo(name)
    accepted = inspect.signature(cls.__init__).parameters
    rebuilt = {k: v for k, v in {**agent["hyperparameters"], **agent.get("config", {})}.items() if k in accepted}
    recorded = {**rebuilt, **meta.get("agent_kwargs", {})}
    # a path to write to is never taken from the file (SB3's learn() writes TensorBoard logs to tensorboard_log)
    model = make_agent(name, env, **{**{k: v for k, v in recorded.items() if k not in _NOT_FROM_FILE}, **kwargs})
    restore_checkpoint(model, directory, algo=name)
    return model
