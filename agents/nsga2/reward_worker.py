"""The worker side of the reward-weighting search: one individual = train, export, score.

A :class:`RewardWorker` holds what every evaluation of one search shares: the backbone, and the
``val`` / ``test`` splits (through :func:`vitskip_env.make_dataset`'s per-process cache). It loads
them on its first task and keeps them, so a task carries only an individual's parameters and seed
(a few hundred bytes) and returns only numbers plus the trained policy's weights (the small
:class:`~vitskip_env.SkipPolicy`, never the backbone). The Dask workers hold one each
(:mod:`agents.nsga2.dask_workers`); the serial runner holds one in the calling process.

This module needs no Dask.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vitskip_env import DynamicViT, ImageDataset, SkippableViT, SkipPolicy, make_dataset
from vitskip_env.env.options import EnvOptions, load_split, resolve_backbone, resolve_device
from vitskip_env.measure import score

#: Searched parameters that are env (reward) keyword arguments.
REWARD_PARAMS: tuple[str, ...] = ("accuracy_weight", "compute_weight", "confidence_weight")
#: Searched parameters that are agent constructor arguments.
AGENT_PARAMS: tuple[str, ...] = ("ent_coef",)
#: Images per forward pass when scoring a ``DynamicViT``.
SCORE_BATCH = 512


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs that is the same for every individual of a search.

    Attributes:
        env_kwargs: ViTSkip env keyword arguments (the registered id's merged with the user's;
            without the searched parameters).
        algo: Agent name for :func:`agents.make_agent`.
        budget_steps: Environment steps each individual trains for.
        num_envs: Images in flight in the training vector env.
        val_images: First images of the ``val`` split every individual is scored on (None: all).
        threads: torch intra-op threads per worker.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; resolved in the worker.
        agent_kwargs: Extra agent constructor arguments (besides the searched ones).
    """

    env_kwargs: Mapping[str, Any]
    algo: str
    budget_steps: int
    num_envs: int
    val_images: int | None
    threads: int
    device: str
    agent_kwargs: Mapping[str, Any] = field(default_factory=dict)


def individual_seed(search_seed: int, index: int) -> int:
    """The training seed of evaluation ``index`` (0, 1, ... in submission order) of a search seeded ``search_seed``."""
    return int(np.random.SeedSequence([int(search_seed), int(index)]).generate_state(1)[0] % 2**31)


def search_backbone(env_kwargs: Mapping[str, Any], device: str | torch.device = "cpu") -> SkippableViT:
    """The backbone an env built from ``env_kwargs`` runs (resolved exactly as the env does), on ``device``."""
    opts = EnvOptions.from_kwargs({**env_kwargs, "split": "val", "device": device}, "the reward search")
    dev = resolve_device(opts.device)
    return resolve_backbone(opts.backbone, opts.backbone_weights, load_split(opts, dev), dev)


def policy_payload(policy: SkipPolicy) -> dict[str, Any]:
    """A trained :class:`SkipPolicy` as plain data (JSON config + safetensors bytes) for the trip back from a worker."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    return {"config": policy.config(), "tensors": save(state)}


def policy_from_payload(payload: Mapping[str, Any]) -> SkipPolicy:
    """Inverse of :func:`policy_payload` (eval mode, CPU)."""
    from safetensors.torch import load

    return SkipPolicy.from_config(payload["config"], load(payload["tensors"])).eval()


def score_dynamic(dyn: DynamicViT, dataset: ImageDataset, n_images: int | None = None) -> dict[str, float]:
    """Top-1 and spent compute of a ``DynamicViT`` on the first ``n_images`` images of ``dataset`` (deterministic).

    :func:`vitskip_env.measure.score` in batches of :data:`SCORE_BATCH`, as plain numbers.

    Returns:
        ``images``, ``top1`` (percent), ``executed_blocks`` (mean per image), ``executed_frac`` (of
        depth) and ``compute`` (mean share of block FLOPs spent, in [0, 1]).
    """
    return score(dyn, dataset, n_images=n_images, batch_size=SCORE_BATCH).as_dict()


_PROCESS_LOADS = [0]  # backbones loaded by this process, all RewardWorkers together


class RewardWorker:
    """Trains and scores individuals of one reward-weighting search; loads the backbone once.

    Args:
        config: The search's :class:`WorkerConfig`.

    Attributes:
        backbone_loads: How many times this worker loaded the backbone (1 after its first task).
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.backbone_loads = 0
        self._backbone: SkippableViT | None = None
        self._device: torch.device | None = None
        # One task at a time per process: SB3 seeds the process-global RNGs and torch's thread count is global.
        self._lock = threading.Lock()

    @property
    def backbone(self) -> SkippableViT:
        """The search's backbone on the worker's device (loaded on first use)."""
        if self._backbone is None:
            self._device = resolve_device(self.config.device)
            self._backbone = search_backbone(self.config.env_kwargs, self._device)
            self.backbone_loads += 1
            _PROCESS_LOADS[0] += 1
        return self._backbone

    def dataset(self, split: str) -> ImageDataset:
        """A split of the search's dataset on the worker's device (cached per process by ``make_dataset``)."""
        kw = self.config.env_kwargs
        return make_dataset(kw.get("dataset", "shapes"), split, kw.get("data_root"), bool(kw.get("download")), self.device)

    @property
    def device(self) -> torch.device:
        """The worker's compute device."""
        _ = self.backbone
        assert self._device is not None
        return self._device

    def train(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """Train one individual and score its ``DynamicViT`` on ``val``.

        Args:
            task: ``index`` (evaluation number), ``seed`` (training seed) and ``params`` (the
                individual's values of :data:`REWARD_PARAMS` / :data:`AGENT_PARAMS`).

        Returns:
            ``index``, ``seed``, the scores of :func:`score_dynamic` on ``val``, ``train_seconds``,
            ``worker`` (host:pid), ``backbone_loads`` (backbones this process has loaded so far) and
            ``policy`` (a :func:`policy_payload`).
        """
        from agents import SB3VecEnv, export_policy, make_agent

        cfg = self.config
        params = dict(task["params"])
        env_kw = {k: v for k, v in params.items() if k in REWARD_PARAMS}
        agent_kw = {k: v for k, v in params.items() if k in AGENT_PARAMS}
        with self._lock, _threads(cfg.threads):
            backbone = self.backbone
            t0 = time.perf_counter()
            env_kwargs = {**cfg.env_kwargs, **env_kw, "backbone": backbone, "device": self.device}
            env = SB3VecEnv(num_envs=cfg.num_envs, **env_kwargs)
            try:
                agent_kwargs = {**cfg.agent_kwargs, **agent_kw}
                model = make_agent(cfg.algo, env, seed=int(task["seed"]), device=self.device, **agent_kwargs)
                model.learn(cfg.budget_steps)
                policy = export_policy(model, env)
            finally:
                env.close()
            seconds = time.perf_counter() - t0
            dyn = DynamicViT(backbone, policy).eval()
            scores = score_dynamic(dyn, self.dataset("val"), cfg.val_images)
        return {
            "index": int(task["index"]),
            "seed": int(task["seed"]),
            **scores,
            "train_seconds": seconds,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "backbone_loads": _PROCESS_LOADS[0],
            "policy": policy_payload(policy),
        }

    def score(self, payload: Mapping[str, Any], split: str, n_images: int | None = None) -> dict[str, float]:
        """Scores (see :func:`score_dynamic`) of a returned policy on ``split`` with this worker's backbone."""
        with self._lock, _threads(self.config.threads):
            dyn = DynamicViT(self.backbone, policy_from_payload(payload)).eval()
            return score_dynamic(dyn, self.dataset(split), n_images)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SerialRunner:
    """Evaluates individuals one after another in this process (no Dask; for debugging and small machines).

    Leaves the caller's random state and thread count as they were.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.worker = RewardWorker(config)

    def __enter__(self) -> SerialRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, tasks: Sequence[Mapping[str, Any]], on_result: Callable[[dict[str, Any]], None]) -> None:
        """Train every task in order, calling ``on_result`` with each result as soon as it is done."""
        for task in tasks:
            with _keep_random_state():
                result = self.worker.train(task)
            on_result(result)

    def score(self, payloads: Sequence[Mapping[str, Any]], split: str, n_images: int | None = None) -> list[dict[str, float]]:
        """Scores of each policy on ``split``."""
        return [self.worker.score(p, split, n_images) for p in payloads]

    def cancel(self) -> None:
        """Nothing runs in the background here."""

    def close(self) -> None:
        """Nothing to shut down."""


@contextlib.contextmanager
def _keep_random_state() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU) global RNG states afterwards (SB3 reseeds them all)."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
