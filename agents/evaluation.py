"""Skip-aware evaluation of any agent with SB3's ``predict``: top-1, executed blocks, per-block rates.

:func:`evaluate_agent` runs the deterministic policy on the test split through a native
``ViTSkipVectorEnv`` (the same ``SkipCore`` the agent trained on) in ``sampling="sequential"``
mode, so ``n_images`` images are each seen exactly once, in order, ``num_envs`` at a time. It is a
plain function: the training scripts, :class:`~agents.callbacks.SkipEvalCallback` and agents
without SB3 callbacks all call it. It scores an agent through the env (its returns, per-block rates
and the like included); a model (a backbone or an exported ``DynamicViT``) is scored by
:func:`vitskip_env.measure.score`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from analysis.stats import spearman
from vitskip_env import ViTSkipVectorEnv

#: Env keyword arguments that only matter for training and are dropped for evaluation.
TRAIN_ONLY_KWARGS = ("backbone_mode", "cotrain", "sampling", "split", "render_mode")


def make_eval_env(env_kwargs: Mapping[str, Any], num_envs: int = 256, split: str = "test") -> ViTSkipVectorEnv:
    """A frozen, sequential-sampling vector env on ``split`` built from training env keyword arguments."""
    kwargs = {k: v for k, v in env_kwargs.items() if k not in TRAIN_ONLY_KWARGS}
    return ViTSkipVectorEnv(num_envs, autoreset_mode=AutoresetMode.DISABLED, split=split, sampling="sequential", **kwargs)


def evaluate_agent(
    agent: Any,
    env: Mapping[str, Any] | ViTSkipVectorEnv,
    n_images: int | None = None,
    *,
    num_envs: int = 256,
    split: str = "test",
    deterministic: bool = True,
    vec_normalize: Any = None,
    throughput_fn: Callable[[Any], float] | None = None,
    return_episodes: bool = False,
) -> dict[str, Any]:
    """Evaluate ``agent`` on the first ``n_images`` images of a split, each exactly once.

    Args:
        agent: Anything with SB3's ``predict(obs, state, episode_start, deterministic)`` (SB3 and
            sb3-contrib models incl. recurrent and maskable ones, :class:`~agents.reinforce.Reinforce`).
        env: Training env keyword arguments (a frozen sequential env on ``split`` is built from
            them; pass ``backbone=<the nn.Module>`` to share weights instead of loading them again;
            a ``num_images`` among them limits the evaluated split too, see ``result["images"]``),
            or a ``ViTSkipVectorEnv`` with ``sampling="sequential"`` to reuse (not ``SAME_STEP``).
        n_images: Images to evaluate (``None`` or more than the split: the whole split).
        num_envs: Images per batch when ``env`` is keyword arguments.
        split: Split to evaluate when ``env`` is keyword arguments.
        deterministic: Greedy actions (the deployed policy).
        vec_normalize: A ``VecNormalize`` whose observation statistics the agent was trained with;
            ``None`` uses ``agent.get_vec_normalize_env()`` when the agent has one.
        throughput_fn: Optional ``fn(agent) -> float``: wall-clock speed-up vs the static backbone
            (from ``DynamicViT``); stored as ``throughput_ratio``.
        return_episodes: Also return per-image arrays under ``"episodes"``.

    Returns:
        ``images``, ``top1`` (percent), ``executed_blocks`` (mean), ``executed_frac`` (of depth),
        ``compute_ratio`` (mean cost share spent), ``block_rates`` (execute rate per block, list),
        ``mean_return`` (mean episode reward), ``difficulty_corr`` (Spearman rank correlation of
        difficulty and executed blocks, when the dataset knows difficulty), ``throughput_ratio``
        (with ``throughput_fn``) and ``episodes`` (with ``return_episodes``: ``image_index``,
        ``label``, ``prediction``, ``correct``, ``confidence``, ``executed_blocks``, ``compute_ratio``, ``return``,
        ``executed_mask`` ``(n, depth)``, ``difficulty`` when known and ``exit_block`` with
        ``actions="skip_exit"``; plus ``exit_blocks``, the mean blocks passed before leaving).
    """
    venv = make_eval_env(env, min(num_envs, n_images or num_envs), split) if isinstance(env, Mapping) else env
    if venv.options.sampling != "sequential" or venv.autoreset_mode == AutoresetMode.SAME_STEP:
        raise ValueError(
            "evaluate_agent needs a ViTSkipVectorEnv with sampling='sequential' and autoreset NEXT_STEP or DISABLED"
        )
    n = len(venv.dataset) if n_images is None else min(int(n_images), len(venv.dataset))
    if vec_normalize is None and hasattr(agent, "get_vec_normalize_env"):
        vec_normalize = agent.get_vec_normalize_env()
    normalize = vec_normalize.normalize_obs if vec_normalize is not None else (lambda o: o)
    masked = "action_masks" in inspect.signature(agent.predict).parameters
    depth, s = venv.core.depth, venv.num_envs
    parts: list[dict[str, np.ndarray]] = []
    obs, _ = venv.reset(seed=0)  # sequential sampling: restarts the sweep at image 0
    for b in range(math.ceil(n / s)):
        if b:
            obs, _ = venv.reset()
        state, starts, total = None, np.ones(s, dtype=bool), np.zeros(s)
        rows: dict[str, np.ndarray] = {}
        for _ in range(depth):  # every episode ends within `depth` steps (each step passes a block or exits)
            extra = {"action_masks": venv.action_masks()} if masked else {}
            actions, state = agent.predict(
                normalize(obs), state=state, episode_start=starts, deterministic=deterministic, **extra
            )
            starts = np.zeros(s, dtype=bool)
            obs, rewards, _, _, infos = venv.step(np.asarray(actions).reshape(s))
            total += rewards
            for key in _EPISODE_KEYS:  # each episode's end fields, taken on the step it ended
                if key in infos:
                    ended = infos[f"_{key}"]
                    rows.setdefault(key, np.zeros_like(infos[key]))[ended] = infos[key][ended]
        keep = min(s, n - b * s)  # the last batch wraps around the split: drop the repeats
        part = {k: v[:keep] for k, v in rows.items()}
        part["return"] = total[:keep]
        parts.append(part)
    ep = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    result: dict[str, Any] = {
        "images": n,
        "top1": 100.0 * float(ep["correct"].mean()),
        "executed_blocks": float(ep["executed_blocks"].mean()),
        "executed_frac": float(ep["executed_blocks"].mean()) / depth,
        "compute_ratio": float(ep["compute_ratio"].mean()),
        "block_rates": ep["executed_mask"].mean(0).tolist(),
        "mean_return": float(ep["return"].mean()),
    }
    if "exit_block" in ep:
        result["exit_blocks"] = float(ep["exit_block"].mean())
    if "difficulty" in ep:
        result["difficulty_corr"] = spearman(ep["difficulty"], ep["executed_blocks"])
    if throughput_fn is not None:
        result["throughput_ratio"] = float(throughput_fn(agent))
    if return_episodes:
        result["episodes"] = ep
    return result


_EPISODE_KEYS = (
    "image_index",
    "label",
    "prediction",
    "correct",
    "confidence",
    "executed_blocks",
    "compute_ratio",
    "executed_mask",
    "difficulty",
    "exit_block",
)
