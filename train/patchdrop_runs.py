"""The contender runs of ``train/patchdrop.py``: one ViT training run each, under the same budget.

Every contender trains through the same :class:`~vitskip_env.env.ViTPatchDropEnv` engine (same
data order, augmentation, optimiser and budget-following learning rate for a seed); only the patch
selection differs. After the run, the ViT is scored on the whole ``val`` and ``test`` splits with
every patch and with the kept patches, and its kept-patch inference and training-step costs are
measured side by side with the full-patch ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vitskip_env.data import make_dataset
from vitskip_env.env import ViTPatchDropEnv
from vitskip_env.measure.peak import peak_of
from vitskip_env.measure.speed import compare_speed
from vitskip_env.model.patch_select import PatchKeptViT, forward_blocks, select_patches

#: The fixed schedule's grid: keep ratios from 0.5 to 1.0 in steps of 1/16.
ANNEAL_RATIOS: tuple[float, ...] = tuple(0.5 + i / 16 for i in range(9))

Chooser = Callable[[np.ndarray, ViTPatchDropEnv], int]


def full_patch(obs: np.ndarray, env: ViTPatchDropEnv) -> int:
    """Always keep every patch (``keep_ratios[0]`` must be 1.0)."""
    return 0


def anneal(obs: np.ndarray, env: ViTPatchDropEnv) -> int:
    """Keep ratio ``0.5 + 0.5 * budget used``, the nearest value of :data:`ANNEAL_RATIOS`."""
    target = 0.5 + 0.5 * min(env.run.fraction, 1.0)
    return int(np.argmin([abs(r - target) for r in env.keep_ratios]))


def policy_chooser(model: Any) -> Chooser:
    """The trained agent's deterministic action."""

    def choose(obs: np.ndarray, env: ViTPatchDropEnv) -> int:
        action, _ = model.predict(obs, deterministic=True)
        return int(np.asarray(action).reshape(()))

    return choose


def run_schedule(env: ViTPatchDropEnv, choose: Chooser, seed: int) -> list[dict[str, Any]]:
    """One episode of a ``keep_ratio``-mode env; returns its step records (a time-zero row first)."""
    obs, _ = env.reset(seed=seed)
    rows = [{"step": 0, "used": 0.0, "val_top1": env.start_val_top1, "val_loss": env.start_val_loss, "keep_ratio": np.nan}]
    done = False
    while not done:
        obs, _, done, _, _ = env.step(choose(obs, env))
        rows.append(dict(env.history[-1]))
    return rows


def run_agentvit(env: ViTPatchDropEnv, seed: int, curve_every: int = 10) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """AgentViT's agent acting and learning online through one run (its own time is on the clock)."""
    from agents.agentvit import AgentViTConfig, AgentViTLearner

    run = env.run
    state, _ = env.reset(seed=seed)
    learner = AgentViTLearner(run.num_patches, AgentViTConfig(skip_first=len(run.train_set) // run.config.batch_size), seed)
    val_loss, val_top1 = run.evaluate()
    rows = [{"step": 0, "used": 0.0, "val_top1": val_top1, "val_loss": val_loss, "keep_ratio": np.nan}]
    done, step = False, 0
    while not done:
        start = time.perf_counter()
        action = learner.act(state)
        agent_seconds = time.perf_counter() - start
        next_state, reward, done, _, _ = env.step(action)
        start = time.perf_counter()
        learner.observe(state, next_state, reward, rewarded=(env.steps_done % env.reward_every == 0))
        agent_seconds += time.perf_counter() - start
        if run.config.clock == "wall":
            run.charge(agent_seconds)  # the agent is part of the method's training cost
        state, step = next_state, step + 1
        row = dict(env.history[-1], used=run.used)
        if step % curve_every == 0 or done:
            row["val_loss"], row["val_top1"] = run.evaluate()
        rows.append(row)
    facts = {
        "epsilon_end": learner.epsilon,
        "explored_share": learner.explored / max(learner.steps, 1),
        "updates": learner.updates,
    }
    return rows, facts


def mean_keep(rows: list[dict[str, Any]]) -> float:
    """The minibatch-weighted mean keep ratio of a run."""
    kept = [(r["keep_ratio"], r.get("minibatches", 1)) for r in rows if not np.isnan(r["keep_ratio"])]
    return float(sum(k * n for k, n in kept) / sum(n for _, n in kept))


def finish(
    env: ViTPatchDropEnv, final_keep: float, mean_keep_ratio: float, scorer: str, rounds: int = 5, images: int | None = None
) -> dict[str, Any]:
    """Top-1 on ``val`` and ``test`` (whole splits unless ``images``) with every patch and at ``final_keep``,
    the kept-patch inference speed-up and the training-step peak memory.

    The kept patches at test time are chosen by the scorer the run trained with (``random``: a seeded
    random subset per image; AgentViT's batch-shared mask has no test-time form: class-token attention).
    """
    run = env.run
    vit = run.model
    test = make_dataset(run.config.dataset, "test", root=run.config.data_root, device=run.device)
    n_val, n_test = min(len(run.val_set), images or len(run.val_set)), min(len(test), images or len(test))
    out: dict[str, Any] = {"final_keep": final_keep, "mean_keep": mean_keep_ratio}
    out["val_top1"] = run.evaluate(n_val)[1]
    out["test_top1"] = run.evaluate(n_test, split="test")[1]
    torch.manual_seed(0)
    out["test_top1_kept"] = run.evaluate(n_test, split="test", keep_ratio=final_keep, scorer=scorer)[1]
    out["kept_scorer"] = scorer
    vit.eval()
    with torch.inference_mode():
        batches = [test.normalize(test.images[i * 256 : (i + 1) * 256]) for i in range(4)]
        kept = PatchKeptViT(vit, final_keep, scorer)
        speed = compare_speed({"all": vit, "kept": kept}, batches, rounds=rounds)
    out["inference_speedup"] = speed["kept"]["speedup"]
    out["inference_images_per_s_kept"] = speed["kept"]["images_per_s"]
    vit.train()
    x, y = run.next_batch()

    def train_step(images: torch.Tensor, keep: float = mean_keep_ratio) -> None:
        tokens, _ = select_patches(vit, vit.embed(images), keep, scorer)
        torch.nn.functional.cross_entropy(forward_blocks(vit, tokens), y).backward()
        vit.zero_grad(set_to_none=True)

    out["train_peak_mib"], out["memory_method"] = peak_of(train_step, x, run.device)
    out["train_peak_mib_full"] = peak_of(lambda images: train_step(images, 1.0), x, run.device)[0]
    return out


def run_summary(rows: list[dict[str, Any]], env: ViTPatchDropEnv) -> dict[str, Any]:
    """Seconds per epoch and images per second of the run's training clock."""
    run = env.run
    epochs = run.images_seen / len(run.train_set)
    return {
        "seconds": run.used,
        "images_seen": run.images_seen,
        "minibatches": run.minibatches,
        "seconds_per_epoch": run.used / epochs if epochs else float("nan"),
        "train_images_per_s": run.images_seen / run.used if run.used else float("nan"),
        "steps": len(rows) - 1,
    }
