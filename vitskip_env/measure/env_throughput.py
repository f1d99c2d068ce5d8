"""Environment throughput: env steps per second of the ways to run ViTSkip, against the compute floor.

Configurations (``CONFIGS``):

- ``single``: one ``ViTSkipEnv`` stepped in a Python loop (batch 1);
- ``sync<N>``: ``SyncVectorEnv`` of ``N`` single envs (``gym.make_vec(..., vectorization_mode="sync")``);
- ``native<N>``: the native ``ViTSkipVectorEnv`` with ``N`` episodes in flight;
- ``floor<N>``: the same work without any env: embed ``N`` images, run every block on the rows a
  random mask executes (gather / scatter), head. Nothing an env can do is faster.

Every configuration follows the same random policy (uniform over the actions: skip / execute, and
exit with ``actions="skip_exit"``). An env step is one decision of one episode, so a vector step
of ``N`` envs counts the sub-environments that stepped; NEXT_STEP autoreset steps and ``reset``
calls are timed but not counted. With ``actions="skip_exit"`` episodes end at different steps and
rows restart one by one; its floor runs each block once per batch on the executing rows still in
flight, every exit head on the rows in flight, and lets a third of those rows leave after each head
(what the uniform policy does), with no per-row block pointers. Measurement rules (docs/architecture.md, "Honest
measurement"): one process, every configuration built first, warm-up rounds, then rounds that run
the configurations interleaved (the order rotates every round), medians over rounds, and ratios
taken per round before their median, so slow drift of the host cancels out.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ..files import atomic_write_text
from ..runtime import sync

CONFIGS: tuple[str, ...] = ("single", "sync64", "native64", "native256", "floor64", "floor256")
#: ``(numerator, denominator)``: the ratios reported beside the rates (the native env against the
#: compute floor, and against Gymnasium's sync vectorisation), when both configurations ran.
RATIOS: tuple[tuple[str, str], ...] = (("native256", "floor256"), ("native64", "sync64"))
Runner = Callable[[], int]  # runs one round, returns the env steps it made


def _actions(rng: np.random.Generator, n: int, count: int, n_actions: int = 2) -> np.ndarray:
    return rng.integers(0, n_actions, size=(count, n))


def _vector_runner(venv: gym.vector.VectorEnv, depth: int, episodes: int, seed: int) -> Runner:
    n = venv.num_envs
    pool = _actions(np.random.default_rng(seed), n, 64, int(venv.single_action_space.n))
    venv.reset(seed=seed)
    state = {"k": 0}

    def run() -> int:
        steps = 0
        for _ in range(episodes * (depth + 1)):  # as many vector steps as `episodes` aligned skip-only batches take
            infos = venv.step(pool[state["k"] % len(pool)])[4]
            state["k"] += 1
            stepped = infos.get("_reward_components")  # NEXT_STEP restarts have no step fields
            steps += int(stepped.sum()) if stepped is not None else 0
        return steps

    return run


def _single_runner(env: gym.Env, depth: int, episodes: int, seed: int) -> Runner:
    pool = [int(a) for a in _actions(np.random.default_rng(seed), 1, 256, int(env.action_space.n))[:, 0]]
    env.reset(seed=seed)
    state = {"k": 0}

    def run() -> int:
        steps = 0
        while steps < episodes * depth:
            env.reset()
            done = False
            while not done:
                done = env.step(pool[state["k"] % len(pool)])[2]
                state["k"] += 1
                steps += 1
        return steps

    return run


def _floor_runner(venv: Any, n: int, episodes: int, seed: int) -> Runner:
    core = venv.unwrapped.core
    vit, ds = core.backbone, core.dataset
    heads = getattr(core, "heads", None)
    g = torch.Generator(device=ds.device).manual_seed(seed)
    # the uniform random policy executes half the blocks, two thirds with an exit action (exit where not allowed executes)
    masks = torch.rand(64, n, vit.depth, generator=g, device=ds.device) < (0.5 if heads is None else 2 / 3)
    leave = torch.rand(64, n, vit.depth, generator=g, device=ds.device) < 1 / 3
    state = {"k": 0}

    @torch.inference_mode()
    def run() -> int:
        steps = 0
        for _ in range(episodes):
            idx = torch.randint(0, len(ds), (n,), generator=g, device=ds.device)
            mask, gone = masks[state["k"] % len(masks)], leave[state["k"] % len(leave)]
            state["k"] += 1
            tokens = vit.embed(ds.normalize(ds.images[idx]))
            for i in range(vit.depth):
                steps += tokens.shape[0]
                tokens = vit.run_block(i, tokens, mask[: tokens.shape[0], i].nonzero().squeeze(1), inplace=True)
                k = heads.index_at(i) if heads is not None and i < vit.depth - 1 else None
                if k is not None:
                    heads.logits(k, tokens, vit).argmax(1)
                    stay = ~gone[: tokens.shape[0], i]
                    steps += int((~stay).sum())  # the exit decisions
                    tokens = tokens[stay]
            vit.head(tokens).argmax(1)
        sync(ds.device)
        return steps

    return run


def measure_env_throughput(
    env_id: str = "ViTSkip-Shapes-v0",
    env_kwargs: dict[str, Any] | None = None,
    configs: Sequence[str] = CONFIGS,
    steps_per_round: int = 4096,
    rounds: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure env steps per second for ``configs`` (names like ``single``, ``sync64``, ``native256``, ``floor256``).

    Args:
        env_id: Registered id.
        env_kwargs: Env keyword arguments (backbone, device, ...); the same for every configuration.
        configs: Configurations to run, interleaved.
        steps_per_round: Env steps per configuration and round (rounded to whole episodes, at least one batch).
        rounds: Timed rounds (the median is reported).
        warmup: Untimed rounds first.
        seed: Seed of the envs and the random policy.

    Returns:
        ``{"rows": [{config, num_envs, steps_per_s, min, max, rounds}], "ratios": [{ratio, median}],
        "meta": {...}}``.
    """
    kwargs = dict(env_kwargs or {})
    probe = gym.make_vec(env_id, num_envs=1, **kwargs)
    depth, device = probe.unwrapped.backbone.depth, probe.unwrapped.core.device
    runners: dict[str, Runner] = {}
    sizes: dict[str, int] = {}
    for name in configs:
        kind, n = name.rstrip("0123456789"), int(name[len(name.rstrip("0123456789")) :] or 1)
        episodes = max(1, steps_per_round // (n * depth))
        sizes[name] = n
        if kind == "single":
            runners[name] = _single_runner(gym.make(env_id, **kwargs), depth, episodes, seed)
        elif kind == "sync":
            venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", **kwargs)
            runners[name] = _vector_runner(venv, depth, episodes, seed)
        elif kind == "native":
            runners[name] = _vector_runner(gym.make_vec(env_id, num_envs=n, **kwargs), depth, episodes, seed)
        elif kind == "floor":
            runners[name] = _floor_runner(gym.make_vec(env_id, num_envs=n, **kwargs), n, episodes, seed)
        else:
            raise ValueError(f"unknown configuration {name!r}; use single, sync<N>, native<N> or floor<N>")
    rates: dict[str, list[float]] = {name: [] for name in configs}
    order = list(configs)
    for r in range(warmup + rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            sync(device)
            t0 = time.perf_counter()
            steps = runners[name]()
            sync(device)
            if r >= warmup:
                rates[name].append(steps / (time.perf_counter() - t0))
    rows = [
        {
            "config": name,
            "num_envs": sizes[name],
            "steps_per_s": statistics.median(v),
            "min": min(v),
            "max": max(v),
            "rounds": len(v),
        }
        for name, v in rates.items()
    ]
    ratios = []
    for num, den in RATIOS:
        if num in rates and den in rates:
            med = statistics.median(a / b for a, b in zip(rates[num], rates[den], strict=True))
            ratios.append({"ratio": f"{num} / {den}", "median": med})
    vit = probe.unwrapped.backbone
    meta = {
        "env_id": env_id,
        "env_kwargs": {k: (v if isinstance(v, (str, int, float, bool)) else type(v).__name__) for k, v in kwargs.items()},
        "backbone": vit.model_name,
        "depth": depth,
        "embed_dim": vit.embed_dim,
        "tokens": vit.num_tokens,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "malloc": {k: os.environ[k] for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}
        or "glibc defaults",
        "rounds": rounds,
        "warmup": warmup,
        "steps_per_round": steps_per_round,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return {"rows": rows, "ratios": ratios, "meta": meta}


def write_results(result: dict[str, Any], out_dir: str | os.PathLike, name: str = "env_throughput") -> tuple[Path, Path]:
    """Write ``<name>.csv`` (one row per configuration) and ``<name>.md`` (tables + settings) atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["config", "num_envs", "steps_per_s", "min", "max", "rounds"]
    lines = [",".join(fields)]
    for row in result["rows"]:
        lines.append(",".join(f"{row[f]:.1f}" if isinstance(row[f], float) else str(row[f]) for f in fields))
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    md = ["# Environment throughput", "", "| configuration | envs | env steps/s (median) | min | max |"]
    md.append("|---|---:|---:|---:|---:|")
    for row in result["rows"]:
        rates = " | ".join(f"{row[k]:,.0f}" for k in ("steps_per_s", "min", "max"))
        md.append(f"| {row['config']} | {row['num_envs']} | {rates} |")
    md += ["", "| ratio (median of per-round ratios) | value |", "|---|---:|"]
    for ratio in result["ratios"]:
        md.append(f"| {ratio['ratio']} | {ratio['median']:.2f} |")
    md += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in result["meta"].items()), ""]
    atomic_write_text(md_path, "\n".join(md))
    return csv_path, md_path
