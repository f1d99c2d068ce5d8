"""REINFORCE with a learned per-block baseline, in plain PyTorch on the Gymnasium vector API.

The algorithm of the original layer-skipping thesis, and the worked example of swapping in a
custom algorithm: it needs nothing from Stable-Baselines3 to train (SB3 is used only for its
logger and, optionally, its callbacks), and talks to any ``gymnasium.vector.VectorEnv`` with a
``Discrete`` action space: ``gym.make_vec("ViTSkip-Shapes-v0", num_envs=256)`` in particular.

One update (Williams 1992, with a baseline; Sutton & Barto 2018, section 13.4):

1. Run the current policy for ``n_steps`` vector steps.
2. For every transition of an episode that finished inside the rollout, the return-to-go
   ``G_t = r_t + gamma * r_{t+1} + ...`` up to the end of *its own* episode. Steps of episodes
   still running at the end are dropped (their return is unknown; REINFORCE does not bootstrap).
3. Advantage ``A_t = G_t - b[t]`` with a learned baseline per step index ``t`` of the episode
   (the block index in ViTSkip). Advantages may be divided by their standard deviation over the
   whole batch but are never re-centred, and returns are never standardised within an episode:
   that would shift each episode's returns by its own mean and flip the sign of the learning
   signal for the early blocks (whose return-to-go is the largest).
4. Loss ``-mean(log pi(a_t|s_t) * A_t) - ent_coef * entropy + mean((G_t - b[t])^2)``.

``predict(obs, state, episode_start, deterministic)`` has SB3's signature, so
``stable_baselines3.common.evaluation.evaluate_policy`` and ``agents.export_policy`` accept it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ProgressBarCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import configure_logger
from torch import nn

from vitskip_env.files import atomic_path
from vitskip_env.runtime import resolve_device

from .extractors import extractor_for, mlp

Obs = np.ndarray | dict[str, np.ndarray]
BASELINE_SLOTS = 1024  # per-step baseline entries; steps beyond share the last one


class PolicyNet(nn.Module):
    """``obs -> action logits``: the ViTSkip features extractor for the space (else an MLP) and a linear head."""

    def __init__(self, observation_space: spaces.Space, n_actions: int, extractor_kwargs: dict[str, Any]) -> None:
        super().__init__()
        try:
            self.features_extractor: nn.Module = extractor_for(observation_space)(observation_space, **extractor_kwargs)
            features_dim = self.features_extractor.features_dim
        except ValueError:  # not a ViTSkip space: flatten + MLP
            size = int(np.prod(observation_space.shape))
            features_dim = int(extractor_kwargs.get("features_dim", 128))
            self.features_extractor = nn.Sequential(
                nn.Flatten(), mlp([size, *extractor_kwargs.get("hidden", []), features_dim])
            )
        self.action_net = nn.Linear(features_dim, n_actions)

    def forward(self, obs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        return self.action_net(self.features_extractor(obs))


class Reinforce:
    """REINFORCE with a learned per-block baseline and an entropy bonus.

    Args:
        env: A Gymnasium vector env with a ``Discrete`` action space (autoreset ``NEXT_STEP`` or
            ``SAME_STEP``), or ``None`` for a predict-only agent (:meth:`load` without env).
        learning_rate: Adam step size of the policy.
        baseline_lr: Adam step size of the per-block baseline (large: it is a table of averages).
        n_steps: Vector steps per update (a few episodes per env).
        gamma: Discount of the return-to-go (1.0: the episode's own total reward).
        ent_coef: Entropy bonus weight.
        normalize_advantage: Divide advantages by their batch standard deviation (no re-centring).
        max_grad_norm: Gradient clipping of the policy.
        extractor_kwargs: Keyword arguments of the features extractor (``agents.extractors``).
        seed: Seeds torch (network init, action sampling) and the env's first reset.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        verbose: 1 prints the logged values every ``log_interval`` updates.
        tensorboard_log: Folder for TensorBoard files (``None``: no TensorBoard).
        observation_space: With ``env=None``: the observation space of one env (``load`` sets it).
        action_space: With ``env=None``: the ``Discrete`` action space of one env.

    Attributes:
        policy: ``obs -> (N, n_actions)`` logits (``features_extractor`` then ``action_net``); the
            deterministic action is their argmax (what ``agents.export_policy`` copies).
        baseline: ``(1024,)`` learned expected return per step index (block) of the episode.

    Example:
        >>> import gymnasium as gym, vitskip_env
        >>> from agents.reinforce import Reinforce
        >>> agent = Reinforce(gym.make_vec("ViTSkip-Shapes-v0", num_envs=256)).learn(100_000)  # doctest: +SKIP
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv | None,
        *,
        learning_rate: float = 1e-3,
        baseline_lr: float = 5e-2,
        n_steps: int = 32,
        gamma: float = 1.0,
        ent_coef: float = 0.01,
        normalize_advantage: bool = True,
        max_grad_norm: float = 0.5,
        extractor_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        device: str | torch.device = "auto",
        verbose: int = 0,
        tensorboard_log: str | None = None,
        observation_space: spaces.Space | None = None,
        action_space: spaces.Discrete | None = None,
    ) -> None:
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.config: dict[str, Any] = {
            "learning_rate": float(learning_rate),
            "baseline_lr": float(baseline_lr),
            "n_steps": int(n_steps),
            "gamma": float(gamma),
            "ent_coef": float(ent_coef),
            "normalize_advantage": bool(normalize_advantage),
            "max_grad_norm": float(max_grad_norm),
            "extractor_kwargs": dict(extractor_kwargs or {}),
        }
        self.env = env
        if env is not None:
            observation_space, action_space = env.single_observation_space, env.single_action_space
        if not isinstance(action_space, spaces.Discrete) or observation_space is None:
            raise TypeError(f"Reinforce needs a vector env with a Discrete action space, got {action_space}")
        self.observation_space, self.action_space = observation_space, action_space
        self.device = resolve_device(device)
        self.seed, self.verbose, self.tensorboard_log = seed, verbose, tensorboard_log
        if seed is not None:
            torch.manual_seed(seed)
        self.policy = PolicyNet(observation_space, int(action_space.n), self.config["extractor_kwargs"]).to(self.device)
        self.baseline = nn.Parameter(torch.zeros(BASELINE_SLOTS, device=self.device))
        self.optimizer = torch.optim.Adam(
            [{"params": self.policy.parameters()}, {"params": [self.baseline], "lr": baseline_lr}], lr=learning_rate
        )
        self.num_timesteps = 0
        self.logger: Logger | None = None
        self._obs: Obs | None = None  # rollout state carried across updates and learn() calls:
        self._t = np.zeros(0, dtype=np.int64)  # step index in its episode of each env's current observation
        self._resetting = np.zeros(0, dtype=bool)  # NEXT_STEP autoreset: the next step only resets

    # ------------------------------------------------------------------ acting
    def _tensor(self, obs: Obs) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(obs, dict):
            return {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in obs.items()}
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device)

    def predict(
        self,
        observation: Obs,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions for a batch of observations (or one), SB3-style: ``(actions, state)`` (state unused)."""
        single = _is_single(observation, self.observation_space)
        obs = {k: v[None] for k, v in observation.items()} if single and isinstance(observation, dict) else observation
        obs = obs[None] if single and not isinstance(obs, dict) else obs
        with torch.no_grad():
            logits = self.policy(self._tensor(obs))
            actions = logits.argmax(1) if deterministic else torch.distributions.Categorical(logits=logits).sample()
        out = actions.cpu().numpy()
        return (out[0] if single else out), state

    # ------------------------------------------------------------------ learning
    def learn(
        self,
        total_timesteps: int,
        callback: BaseCallback | Sequence[BaseCallback] | None = None,
        log_interval: int = 1,
        progress_bar: bool = False,
        reset_num_timesteps: bool = True,
    ) -> Reinforce:
        """Train for ``total_timesteps`` environment steps (transitions), SB3-style.

        Args:
            total_timesteps: Steps to run (added to the current count if ``reset_num_timesteps=False``).
            callback: SB3 callbacks (they get this agent as ``model``: ``num_timesteps``, ``logger``,
                ``predict``, ``save``).
            log_interval: Dump logs every this many updates.
            progress_bar: Show a progress bar (tqdm + rich).
            reset_num_timesteps: Start counting at zero (``False`` continues a loaded agent).
        """
        env = self.env
        if env is None:
            raise RuntimeError("this agent has no env (loaded without one): Reinforce.load(path, env=venv) to train")
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"Reinforce needs autoreset_mode NEXT_STEP or SAME_STEP, the env has {mode}")
        if reset_num_timesteps or self.logger is None:
            self.logger = configure_logger(self.verbose, self.tensorboard_log, "Reinforce", reset_num_timesteps)
        if reset_num_timesteps:
            self.num_timesteps = 0
        total_timesteps += self.num_timesteps  # the absolute target (ProgressBarCallback reads this local)
        cb = self._init_callback(callback, progress_bar)
        if self._obs is None or reset_num_timesteps:
            self._obs, _ = env.reset(seed=self.seed if self._obs is None else None)  # seed once, as SB3 does
            self._t = np.zeros(env.num_envs, dtype=np.int64)
            self._resetting = np.zeros(env.num_envs, dtype=bool)
        cb.on_training_start(locals(), globals())
        start, start_steps, updates = time.time(), self.num_timesteps, 0
        while self.num_timesteps < total_timesteps:
            cb.on_rollout_start()
            batch, ok = self._collect(env, mode, cb)
            cb.on_rollout_end()
            if not ok:
                break
            stats = self._update(*batch)
            updates += 1
            if log_interval and updates % log_interval == 0:
                for key, value in stats.items():
                    self.logger.record(key, value)
                self.logger.record("time/fps", int((self.num_timesteps - start_steps) / max(time.time() - start, 1e-9)))
                self.logger.record("time/total_timesteps", self.num_timesteps)
                self.logger.dump(self.num_timesteps)
        cb.on_training_end()
        return self

    def _init_callback(self, callback: BaseCallback | Sequence[BaseCallback] | None, progress_bar: bool) -> BaseCallback:
        callbacks = [] if callback is None else list(callback) if isinstance(callback, Sequence) else [callback]
        if progress_bar:
            callbacks.append(ProgressBarCallback())
        cb = CallbackList(callbacks)
        cb.init_callback(self)  # type: ignore[arg-type]  # duck-typed: num_timesteps, logger, get_env, predict, save
        return cb

    def _collect(self, env: gym.vector.VectorEnv, mode: AutoresetMode, cb: BaseCallback) -> tuple[tuple, bool]:
        """``n_steps`` vector steps -> ((obs, actions, returns, t, episode returns), keep going)."""
        obs_buf, act_buf, rew_buf, done_buf, t_buf, valid_buf = [], [], [], [], [], []
        keep_going = True
        for _ in range(self.config["n_steps"]):
            obs_t = self._tensor(self._obs)
            with torch.no_grad():
                actions = torch.distributions.Categorical(logits=self.policy(obs_t)).sample()
            self._obs, rewards, terminated, truncated, _ = env.step(actions.cpu().numpy())
            done = np.logical_or(terminated, truncated)  # truncated episodes end without bootstrapping
            valid = ~self._resetting  # NEXT_STEP: the step after an episode end only resets (its action is ignored)
            obs_buf.append(obs_t)
            act_buf.append(actions)
            rew_buf.append(np.asarray(rewards, dtype=np.float64))
            done_buf.append(done)
            t_buf.append(self._t.copy())
            valid_buf.append(valid)
            restart = done | self._resetting
            self._t = np.where(restart, 0, self._t + 1)
            self._resetting = done if mode == AutoresetMode.NEXT_STEP else np.zeros_like(done)
            self.num_timesteps += env.num_envs
            cb.update_locals(locals())
            if not cb.on_step():
                keep_going = False
                break
        rewards, dones = np.stack(rew_buf), np.stack(done_buf)
        returns, complete = discounted_returns(rewards, dones, self.config["gamma"])
        keep = torch.as_tensor(np.stack(valid_buf) & complete, device=self.device).reshape(-1)
        first = keep & torch.as_tensor(np.stack(t_buf) == 0, device=self.device).reshape(-1)
        flat_obs: torch.Tensor | dict[str, torch.Tensor]
        if isinstance(obs_t, dict):
            flat_obs = {k: torch.cat([o[k] for o in obs_buf])[keep] for k in obs_t}
        else:
            flat_obs = torch.cat(obs_buf)[keep]
        returns_t = torch.as_tensor(returns, dtype=torch.float32, device=self.device).reshape(-1)
        t_idx = torch.as_tensor(np.stack(t_buf), device=self.device).reshape(-1).clamp(max=BASELINE_SLOTS - 1)
        batch = (flat_obs, torch.cat(act_buf)[keep], returns_t[keep], t_idx[keep], returns_t[first])
        return batch, keep_going

    def _update(
        self,
        obs: torch.Tensor | dict[str, torch.Tensor],
        actions: torch.Tensor,
        returns: torch.Tensor,
        t: torch.Tensor,
        episode_returns: torch.Tensor,
    ) -> dict[str, float]:
        if returns.numel() == 0:  # no episode finished inside the rollout: n_steps shorter than an episode
            return {}
        dist = torch.distributions.Categorical(logits=self.policy(obs))
        baseline = self.baseline[t]
        advantages = (returns - baseline).detach()
        if self.config["normalize_advantage"] and advantages.numel() > 1:
            advantages = advantages / (advantages.std() + 1e-8)  # scale only: the signs stay as the baseline set them
        policy_loss = -(dist.log_prob(actions) * advantages).mean()
        entropy = dist.entropy().mean()
        baseline_loss = (returns - baseline).pow(2).mean()
        loss = policy_loss - self.config["ent_coef"] * entropy + baseline_loss
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), self.config["max_grad_norm"])
        self.optimizer.step()
        return {
            "train/policy_loss": policy_loss.item(),
            "train/entropy": entropy.item(),
            "train/baseline_loss": baseline_loss.item(),
            "rollout/ep_rew_mean": float(episode_returns.mean()) if episode_returns.numel() else float("nan"),
        }

    # ------------------------------------------------------------------ SB3 duck typing
    def get_env(self) -> gym.vector.VectorEnv | None:
        """The training env (for callbacks)."""
        return self.env

    def get_vec_normalize_env(self) -> None:
        """No ``VecNormalize`` (SB3 callbacks ask)."""
        return None

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write config, spaces, weights, baseline, optimizer state and step count (``torch.save``)."""
        state = {
            "config": self.config,
            "observation_space": _space_to_dict(self.observation_space),
            "n_actions": int(self.action_space.n),
            "policy": self.policy.state_dict(),
            "baseline": self.baseline.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "num_timesteps": self.num_timesteps,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, env: gym.vector.VectorEnv | None = None, **kwargs: Any) -> Reinforce:
        """An agent from :meth:`save` (``torch.load(weights_only=True)``: no code is unpickled).

        Args:
            path: The saved file.
            env: Env to continue training on (``None``: predict only).
            **kwargs: Overrides of the constructor arguments (``device``, ``seed``, ``verbose``...).
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        space = _space_from_dict(state["observation_space"])
        if env is not None and env.single_observation_space != space:
            raise ValueError(f"the agent was saved for observations {space}, the env gives {env.single_observation_space}")
        agent = cls(
            env, **{**state["config"], **kwargs}, observation_space=space, action_space=spaces.Discrete(state["n_actions"])
        )
        agent.policy.load_state_dict(state["policy"])
        with torch.no_grad():
            agent.baseline.copy_(state["baseline"])
        agent.optimizer.load_state_dict(state["optimizer"])
        agent.num_timesteps = int(state["num_timesteps"])
        return agent


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Return-to-go of every step within its own episode, for ``(steps, envs)`` arrays.

    Returns:
        ``(returns, complete)``: ``returns[s, j] = sum_k gamma^k r[s+k, j]`` up to and including the
        step where env ``j``'s episode ends; ``complete`` is ``False`` for steps whose episode had not
        ended by the last step (their return is unknown).
    """
    returns = np.zeros(rewards.shape, dtype=np.float64)
    complete = np.zeros(rewards.shape, dtype=bool)
    running = np.zeros(rewards.shape[1], dtype=np.float64)
    ended = np.zeros(rewards.shape[1], dtype=bool)
    for s in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[s] + gamma * running * ~dones[s]
        ended = dones[s] | ended
        returns[s], complete[s] = running, ended
    return returns, complete


def _is_single(obs: Obs, space: spaces.Space) -> bool:
    if isinstance(obs, dict):
        key = next(iter(obs))
        return np.shape(obs[key]) == space[key].shape
    return np.shape(obs) == space.shape


def _space_to_dict(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Dict):
        return {"dict": {k: _space_to_dict(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"low": torch.from_numpy(np.array(space.low)), "high": torch.from_numpy(np.array(space.high))}
    raise TypeError(f"Reinforce.save supports Box and Dict observation spaces, got {space}")


def _space_from_dict(data: dict[str, Any]) -> spaces.Space:
    if "dict" in data:
        return spaces.Dict({k: _space_from_dict(v) for k, v in data["dict"].items()})
    return spaces.Box(data["low"].numpy(), data["high"].numpy(), dtype=data["low"].numpy().dtype)
