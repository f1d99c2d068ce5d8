"""The random-number and environment state of a training run, as plain data (no pickles).

:func:`capture_rng` / :func:`restore_rng` cover Python's ``random``, NumPy's global generator and
torch's CPU (and CUDA) generators; :func:`capture_env` / :func:`restore_env` cover the wrappers
Stable-Baselines3 puts around the env (``VecNormalize`` statistics, ``VecMonitor`` running
episodes) and the native ``ViTSkipVectorEnv`` (its image sampler, the episodes in flight and, in
``cotrain`` mode, the backbone and its optimizer).

Every capture returns three parts: ``json`` (plain JSON values), ``tensors`` (for ``torch.save`` /
``torch.load(weights_only=True)``) and ``arrays`` (NumPy arrays for ``np.savez`` /
``np.load(allow_pickle=False)``). :mod:`agents.checkpoint` writes them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnvWrapper, VecMonitor, VecNormalize

#: NumPy bit generators a checkpoint may name (looked up here, never imported by name).
BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


@dataclass
class Parts:
    """What a capture returns: plain JSON, torch tensors and NumPy arrays, each keyed by name."""

    json: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def merge(self, prefix: str, other: Parts) -> None:
        """Add ``other`` under ``prefix`` (JSON nested, tensors and arrays as ``prefix/name``)."""
        self.json[prefix] = other.json
        self.tensors.update({f"{prefix}/{k}": v for k, v in other.tensors.items()})
        self.arrays.update({f"{prefix}/{k}": v for k, v in other.arrays.items()})

    def sub(self, prefix: str) -> Parts:
        """The part stored under ``prefix`` by :meth:`merge`."""
        p = f"{prefix}/"
        return Parts(
            self.json.get(prefix, {}),
            {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)},
            {k[len(p) :]: v for k, v in self.arrays.items() if k.startswith(p)},
        )


# ---------------------------------------------------------------------------- generators
def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A NumPy ``Generator``'s bit-generator state as JSON (Python ints are exact in JSON)."""
    return rng.bit_generator.state


def generator_from_state(state: dict[str, Any]) -> np.random.Generator:
    """A NumPy ``Generator`` in the state :func:`generator_state` recorded.

    Raises:
        ValueError: The state names a bit generator outside :data:`BIT_GENERATORS`.
    """
    name = state.get("bit_generator")
    if name not in BIT_GENERATORS:
        raise ValueError(f"checkpoint names an unknown random bit generator {name!r}; known: {sorted(BIT_GENERATORS)}")
    bit_generator = BIT_GENERATORS[name]()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def capture_rng() -> Parts:
    """Python ``random``, NumPy's global ``RandomState`` and torch's generators."""
    parts = Parts()
    version, internal, gauss = random.getstate()
    parts.json["python"] = {"version": version, "state": list(internal), "gauss_next": gauss}
    name, key, pos, has_gauss, cached = np.random.get_state()
    parts.json["numpy"] = {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    parts.arrays["numpy_key"] = np.asarray(key, dtype=np.uint32)
    parts.tensors["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        parts.tensors.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return parts


def restore_rng(parts: Parts) -> None:
    """Put back what :func:`capture_rng` recorded (CUDA states only where the same devices exist)."""
    py = parts.json["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
    npj = parts.json["numpy"]
    key = np.asarray(parts.arrays["numpy_key"], dtype=np.uint32)
    np.random.set_state((str(npj["name"]), key, int(npj["pos"]), int(npj["has_gauss"]), float(npj["cached_gaussian"])))
    torch.set_rng_state(parts.tensors["torch_cpu"].to(torch.uint8))
    cuda = [parts.tensors[k] for k in sorted(k for k in parts.tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])


# ---------------------------------------------------------------------------- env
def _layers(env: Any) -> list[Any]:
    """The env and every SB3 wrapper below it, outermost first."""
    layers = [env]
    while isinstance(layers[-1], VecEnvWrapper):
        layers.append(layers[-1].venv)
    return layers


def native_env(env: Any) -> Any:
    """The ``ViTSkipVectorEnv`` under SB3 wrappers / ``SB3VecEnv`` / Gymnasium vector wrappers (``None`` if none)."""
    inner = _layers(env)[-1] if env is not None else None
    inner = getattr(inner, "vector_env", inner)  # SB3VecEnv
    inner = getattr(inner, "unwrapped", inner)  # Gymnasium vector wrappers
    return inner if hasattr(inner, "sampler") and hasattr(inner, "core") else None


def find_vec_normalize(env: Any) -> VecNormalize | None:
    """The ``VecNormalize`` among the SB3 wrappers of ``env`` (``None`` if none)."""
    return next((layer for layer in _layers(env) if isinstance(layer, VecNormalize)), None)


def _rms_parts(rms: Any) -> dict[str, Any]:
    return {"mean": np.asarray(rms.mean, dtype=np.float64), "var": np.asarray(rms.var, dtype=np.float64)}


def vec_normalize_settings(vn: VecNormalize) -> dict[str, Any]:
    """The constructor settings of a ``VecNormalize`` as JSON."""
    keys = list(vn.norm_obs_keys) if vn.norm_obs_keys is not None else None
    return {"training": bool(vn.training), "norm_obs": bool(vn.norm_obs), "norm_reward": bool(vn.norm_reward),
            "clip_obs": float(vn.clip_obs), "clip_reward": float(vn.clip_reward), "gamma": float(vn.gamma),
            "epsilon": float(vn.epsilon), "norm_obs_keys": keys}  # fmt: skip


def capture_env(env: Any) -> Parts:
    """The state of ``env``'s SB3 wrappers and of the native ViTSkip vector env under them."""
    parts = Parts()
    vn = find_vec_normalize(env)
    if vn is not None:
        p = Parts({"settings": vec_normalize_settings(vn), "counts": {}})
        rms_all = vn.obs_rms if isinstance(vn.obs_rms, dict) else {"": vn.obs_rms}
        for key, rms in [*rms_all.items(), ("__ret__", vn.ret_rms)]:
            p.json["counts"][key] = float(rms.count)
            p.arrays.update({f"{key}/{k}": v for k, v in _rms_parts(rms).items()})
        p.arrays["returns"] = np.asarray(vn.returns, dtype=np.float64)
        parts.merge("vec_normalize", p)
    monitor = next((layer for layer in _layers(env) if isinstance(layer, VecMonitor)), None)
    if monitor is not None:
        p = Parts({"episode_count": int(monitor.episode_count)})
        p.arrays = {"episode_returns": monitor.episode_returns.copy(), "episode_lengths": monitor.episode_lengths.copy()}
        parts.merge("vec_monitor", p)
    venv = native_env(env)
    if venv is not None:
        parts.merge("vitskip", _capture_native(venv))
    return parts


def restore_env(env: Any, parts: Parts) -> None:
    """Put back what :func:`capture_env` recorded into an env built like the original one.

    Raises:
        ValueError: The env's wrappers or sizes differ from the recorded ones.
    """
    vn = find_vec_normalize(env)
    if ("vec_normalize" in parts.json) != (vn is not None):
        raise ValueError("the checkpoint and the env disagree on VecNormalize: build the env as the original run did")
    if vn is not None:
        p = parts.sub("vec_normalize")
        rms_all = vn.obs_rms if isinstance(vn.obs_rms, dict) else {"": vn.obs_rms}
        for key, rms in [*rms_all.items(), ("__ret__", vn.ret_rms)]:
            if key not in p.json["counts"]:
                raise ValueError(f"the checkpoint has no VecNormalize statistics for observation key {key!r}")
            rms.mean, rms.var = p.arrays[f"{key}/mean"].copy(), p.arrays[f"{key}/var"].copy()
            rms.count = float(p.json["counts"][key])
        vn.returns = p.arrays["returns"].copy()
    monitor = next((layer for layer in _layers(env) if isinstance(layer, VecMonitor)), None)
    if monitor is not None and "vec_monitor" in parts.json:
        p = parts.sub("vec_monitor")
        monitor.episode_count = int(p.json["episode_count"])
        monitor.episode_returns, monitor.episode_lengths = (
            p.arrays["episode_returns"].copy(),
            p.arrays["episode_lengths"].copy(),
        )
    venv = native_env(env)
    if venv is not None and "vitskip" in parts.json:
        _restore_native(venv, parts.sub("vitskip"))


def _capture_native(venv: Any) -> Parts:
    sampler, core = venv.sampler, venv.core
    p = Parts()
    p.json["num_envs"] = int(venv.num_envs)
    p.json["sampler"] = {"mode": sampler.mode, "n": int(sampler.n), "positions": sampler.positions.tolist(),
                         "epochs": sampler.epochs.tolist(), "rngs": [generator_state(r) for r in sampler.rngs]}  # fmt: skip
    if sampler._keys is not None:
        p.arrays["sampler_keys"] = np.asarray(sampler._keys, dtype=np.uint64)
    p.json["autoreset"] = bool(getattr(venv, "_autoreset", False))
    p.json["block"] = int(core.block)
    if getattr(venv, "per_row", False):  # actions="skip_exit": rows restart one by one
        p.arrays["restart"], p.arrays["over"] = venv._restart.copy(), venv._over.copy()
    if core.tokens is not None:
        for name in ("image_index", "labels", "executed", "tokens", *core.row_state):
            p.tensors[name] = getattr(core, name).detach().cpu().clone()
    cot = core.cotrainer
    if cot is not None:
        p.json["cotrain"] = {"steps": int(cot.steps), "pending": int(cot._pending), "last_loss": cot.last_loss}
        p.tensors["cotrain_backbone"] = {k: v.detach().cpu().clone() for k, v in core.backbone.state_dict().items()}
        p.tensors["cotrain_optimizer"] = cot.optimizer.state_dict()
        if cot.scheduler is not None:
            p.tensors["cotrain_scheduler"] = {k: v for k, v in cot.scheduler.state_dict().items() if k != "lr_lambdas"}
        if cot._indices:
            p.tensors["cotrain_indices"] = torch.cat(cot._indices).cpu()
            p.tensors["cotrain_masks"] = torch.cat(cot._masks).cpu()
    return p


def _restore_native(venv: Any, p: Parts) -> None:
    sampler, core = venv.sampler, venv.core
    saved = p.json["sampler"]
    if int(p.json["num_envs"]) != venv.num_envs or saved["n"] != sampler.n or saved["mode"] != sampler.mode:
        raise ValueError(
            f"the checkpoint's env had num_envs={p.json['num_envs']}, {saved['n']} images, sampling {saved['mode']!r}; "
            f"this env has num_envs={venv.num_envs}, {sampler.n} images, sampling {sampler.mode!r}: "
            "build it as the original run did"
        )
    sampler.rngs = [generator_from_state(s) for s in saved["rngs"]]
    if "positions" in saved:  # per stream (episodes of different lengths)
        sampler.positions = np.asarray(saved["positions"], dtype=np.int64)
        sampler.epochs = np.asarray(saved["epochs"], dtype=np.int64)
    else:  # checkpoints written before streams could drift apart: one position for all
        sampler.positions = np.full(sampler.num_streams, int(saved["position"]), dtype=np.int64)
        sampler.epochs = np.full(sampler.num_streams, int(saved["epoch"]), dtype=np.int64)
    sampler._keys = p.arrays["sampler_keys"].copy() if "sampler_keys" in p.arrays else None
    venv._autoreset = bool(p.json["autoreset"])
    device = core.device
    if "tokens" in p.tensors:
        with torch.inference_mode():  # as SkipCore.start makes them
            core.image_index = p.tensors["image_index"].to(device)
            core.labels = p.tensors["labels"].to(device)
            core.executed = p.tensors["executed"].to(device)
            core.tokens = p.tensors["tokens"].to(device)
            for name in core.row_state:
                setattr(core, name, p.tensors[name].to(device))
    if getattr(venv, "per_row", False) and "restart" in p.arrays:
        venv._restart, venv._over = p.arrays["restart"].copy(), p.arrays["over"].copy()
    core.block = int(p.json["block"])
    cot = core.cotrainer
    if ("cotrain" in p.json) != (cot is not None):
        raise ValueError("the checkpoint and the env disagree on backbone_mode (cotrain): resume with the original settings")
    if cot is not None:
        core.backbone.load_state_dict(p.tensors["cotrain_backbone"])
        cot.optimizer.load_state_dict(p.tensors["cotrain_optimizer"])
        if cot.scheduler is not None and "cotrain_scheduler" in p.tensors:
            cot.scheduler.load_state_dict({**cot.scheduler.state_dict(), **p.tensors["cotrain_scheduler"]})
        info = p.json["cotrain"]
        cot.steps, cot._pending, cot.last_loss = int(info["steps"]), int(info["pending"]), info["last_loss"]
        has = "cotrain_indices" in p.tensors
        cot._indices = [p.tensors["cotrain_indices"].to(device)] if has else []
        cot._masks = [p.tensors["cotrain_masks"].to(device)] if has else []
