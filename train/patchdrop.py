"""RL patch dropping during ViT training (the AgentViT idea), measured against what a practitioner would use.

    python train/patchdrop.py                                   # shapes, `mini` ViT, 2 seeds (~30 min on 2 CPU cores)
    python train/patchdrop.py --budget 300 --agent-steps 400    # longer runs
    python train/patchdrop.py --resume runs/patchdrop/<run>     # continue an interrupted run

Per seed: an agent (SB3 PPO by default; any ``--algo`` of ``agents.ALGOS`` or ``module:Class``) learns
on ``ViTPatchDrop-<Dataset>-v0`` which keep ratio to train at (episodes of ``--agent-budget`` seconds),
then five ViTs are trained from the same seed with the same ``--budget`` of measured training time:

- ``learned``: the agent's schedule (deterministic actions on the run's own progress);
- ``full``: every patch;
- ``random``: timm's ``PatchDropout`` (a random subset per image) at the learned run's mean keep ratio;
- ``anneal``: keep ratio 0.5 -> 1.0 with the share of the budget used;
- ``agentvit``: AgentViT's own learner acting and learning online (``mode="agentvit"``).

Writes the run directory: ``runs.csv`` / ``runs.parquet`` (one row per contender and seed: val/test
top-1 with all and with the kept patches, seconds per epoch, images/s, training-step peak memory, the
kept-patch inference speed-up), ``steps.parquet`` (the keep-ratio trajectory and the validation curve
of every run), ``summary.md`` (the table and the goals), ``top1_vs_time.png``, ``agent-s<seed>.csv``
(the agent's training episodes), ``models/<contender>-s<seed>.safetensors`` (every trained ViT, loadable
with ``vitskip_env.load_backbone``; ``PatchKeptViT(vit, keep)`` runs it on kept patches). Every finished
run is saved at once (``parts/``) and the agent is checkpointed after every rollout (no pickle), so
``--resume`` loses at most the episode in flight.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import gymnasium as gym
import numpy as np
import pandas as pd
import patchdrop_runs as runs
import tyro

from vitskip_env.env import KEEP_RATIOS, ViTPatchDropEnv
from vitskip_env.files import atomic_path, atomic_write_text

CONTENDER_ORDER: tuple[str, ...] = ("learned", "full", "random", "anneal", "agentvit")


@dataclass
class Args:
    dataset: str = "shapes"
    """dataset (its train split trains, the first --val-images of val steer and score the curve)"""
    backbone: str = "mini"
    """preset trained from scratch per seed (default `mini`: 64 patches) or a backbone file to fine-tune"""
    seeds: tuple[int, ...] = (0, 1)
    """one agent and five ViT runs per seed"""
    budget: float = 90.0
    """measured training seconds of every contender run"""
    agent_budget: float = 25.0
    """measured training seconds of each agent-training episode"""
    agent_steps: int = 96
    """env steps the agent trains for, per seed (0: no agent; `learned` and `random` are then skipped)"""
    algo: str = "ppo"
    """agent algorithm: a name of agents.ALGOS or module:Class"""
    n_steps: int = 16
    """rollout length of on-policy agents (a checkpoint after each)"""
    minibatches_per_step: int = 20
    """training minibatches per env step (one keep-ratio decision)"""
    keep_ratios: tuple[float, ...] = KEEP_RATIOS
    """the agent's choices"""
    scorer: str = "cls_attn"
    """which patches a learned or fixed schedule keeps: cls_attn (first-block class-token attention) or random"""
    contenders: tuple[str, ...] = CONTENDER_ORDER
    batch_size: int = 128
    lr: float = 2e-3
    """peak AdamW learning rate (warm-up then cosine over the budget)"""
    val_images: int = 512
    """validation images behind the observation and the curves"""
    test_images: int | None = None
    """images of val and test scoring each trained ViT (default: the whole splits)"""
    rounds: int = 5
    """timed rounds of the inference speed-up (medians of per-round ratios)"""
    clock: str = "wall"
    """wall (measured seconds) or tokens (deterministic, for tests: budgets in full-patch minibatches)"""
    device: str = "cpu"
    threads: int | None = None
    """CPU threads (default: all)"""
    runs_dir: str = "runs/patchdrop"
    resume: str | None = None
    """a run directory to continue (its recorded arguments are used)"""
    data_root: str | None = None
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments for the agent's constructor"""


def make_env(args: Args, budget: float, **overrides: Any) -> ViTPatchDropEnv:
    """The env of one run, built from the script's arguments."""
    kwargs: dict[str, Any] = {
        "budget": budget, "clock": args.clock, "minibatches_per_step": args.minibatches_per_step,
        "keep_ratios": args.keep_ratios, "scorer": args.scorer, "batch_size": args.batch_size, "lr": args.lr,
        "val_images": args.val_images, "device": args.device, "data_root": args.data_root,
    }  # fmt: skip
    kwargs.update(overrides)
    return ViTPatchDropEnv(args.dataset, args.backbone, **kwargs)


class EpisodeLog(gym.Wrapper):
    """Records each finished episode of agent training: return, steps, mean keep ratio, final val top-1."""

    def __init__(self, env: ViTPatchDropEnv, rows: list[dict[str, Any]]) -> None:
        super().__init__(env)
        self.rows = rows
        self._return = 0.0

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += reward
        if terminated or truncated:
            history = self.env.unwrapped.history
            self.rows.append({
                "episode": len(self.rows), "return": self._return, "steps": len(history),
                "mean_keep": runs.mean_keep(history), "val_top1": info["val_top1"], "seconds": info["used"],
            })  # fmt: skip
            self._return = 0.0
        return obs, reward, terminated, truncated, info


def train_agent(args: Args, seed: int, run_dir: Path) -> Any:
    """Train (or finish training) the seed's agent; checkpointed after every rollout."""
    from stable_baselines3.common.torch_layers import FlattenExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents import make_agent, resolve_algo
    from agents.checkpoint import restore_checkpoint, save_checkpoint

    log_path = run_dir / f"agent-s{seed}.csv"
    rows: list[dict[str, Any]] = pd.read_csv(log_path).to_dict("records") if log_path.is_file() else []
    env = EpisodeLog(make_env(args, args.agent_budget), rows)
    venv = DummyVecEnv([lambda: env])
    _, cls = resolve_algo(args.algo)
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"seed": seed, "verbose": 0, "gamma": 1.0}
    kwargs["policy_kwargs"] = {"net_arch": [64, 64], "features_extractor_class": FlattenExtractor}
    if "n_steps" in params:
        kwargs["n_steps"] = args.n_steps
    if "batch_size" in params and "n_steps" in params:
        kwargs["batch_size"] = max(2, args.n_steps // 2)
    if "ent_coef" in params:
        kwargs["ent_coef"] = 0.01
    kwargs.update(args.agent_kwargs)
    model = make_agent(args.algo, venv, **kwargs)
    ckpt = run_dir / f"agent-s{seed}"
    if (ckpt / "checkpoint.json").is_file():
        restore_checkpoint(model, ckpt)
        model._last_obs = None  # the episode in flight at the interruption starts again
    chunk = args.n_steps if "n_steps" in params else 16
    while model.num_timesteps < args.agent_steps:
        start = time.perf_counter()
        model.learn(total_timesteps=min(chunk, args.agent_steps - model.num_timesteps), reset_num_timesteps=False)
        save_checkpoint(model, ckpt, extra={"seed": seed})
        _write_csv(pd.DataFrame(rows), log_path)
        last = rows[-1] if rows else {}
        detail = ""
        if last:
            detail = f", last return {last['return']:.3f}, mean keep {last['mean_keep']:.2f}"
            detail += f", val top-1 {100 * last['val_top1']:.1f}%"
        took = time.perf_counter() - start
        progress = f"{model.num_timesteps}/{args.agent_steps} steps, {len(rows)} episodes"
        print(f"  agent seed {seed}: {progress}{detail} ({took:.0f} s)", flush=True)
    return model


def run_contender(
    name: str, args: Args, seed: int, model: Any, learned_keep: float | None, run_dir: Path
) -> tuple[dict, list[dict]]:
    """Train one contender's ViT (saved under ``run_dir/models``); returns its summary row and its step rows."""
    facts: dict[str, Any] = {}
    scorer = args.scorer
    if name == "agentvit":
        env = make_env(args, args.budget, mode="agentvit")
        rows, facts = runs.run_agentvit(env, seed)
        final_keep = float(rows[-1]["keep_ratio"])
    else:
        ratios, choose = args.keep_ratios, runs.full_patch
        if name == "learned":
            choose = runs.policy_chooser(model)
        elif name == "full":
            ratios = (1.0,)
        elif name == "random":
            ratios, scorer = (float(learned_keep),), "random"
        elif name == "anneal":
            ratios, choose = runs.ANNEAL_RATIOS, runs.anneal
        env = make_env(args, args.budget, keep_ratios=ratios, scorer=scorer)
        rows = runs.run_schedule(env, choose, seed)
        final_keep = float(rows[-1]["keep_ratio"])
    summary = {"contender": name, "seed": seed, **runs.run_summary(rows, env)}
    kept_scorer = "random" if scorer == "random" else "cls_attn"
    summary.update(runs.finish(env, final_keep, runs.mean_keep(rows), kept_scorer, args.rounds, args.test_images))
    summary.update(facts)
    models = run_dir / "models"
    models.mkdir(exist_ok=True)
    train = env.run.train_set
    env.run.model.save(
        models / f"{name}-s{seed}.safetensors", dataset=args.dataset, mean=list(train.mean), std=list(train.std),
        image_size=train.image_size, classes=list(train.classes),
        training={"script": "train/patchdrop.py", "contender": name, "seed": seed, "args": asdict(args)},
    )  # fmt: skip
    env.close()
    return summary, rows


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def check_args(args: Args) -> None:
    """Clear errors for arguments the env would only reject much later."""
    unknown = [c for c in args.contenders if c not in CONTENDER_ORDER]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}: choose from {list(CONTENDER_ORDER)}")
    if "random" in args.contenders and ("learned" not in args.contenders or args.agent_steps <= 0):
        raise SystemExit("`random` runs at the learned schedule's mean keep ratio: keep `learned` and --agent-steps > 0")
    if args.agent_steps < 0 or not args.seeds:
        raise SystemExit("--agent-steps must be >= 0 and --seeds must name at least one seed")
    make_env(args, args.budget).close()  # every env argument checked before hours are spent


def open_run(args: Args) -> tuple[Args, Path]:
    """A new run directory, or the one to resume with its recorded arguments."""
    if args.resume is None:
        run_dir = common.make_run_dir(Path(args.runs_dir), f"{args.dataset}-{args.backbone}")
        atomic_write_text(run_dir / "args.json", json.dumps(asdict(args), indent=1) + "\n")
        return args, run_dir
    run_dir = Path(args.resume)
    recorded_path = run_dir / "args.json"
    if not recorded_path.is_file():
        raise SystemExit(f"--resume {run_dir}: no args.json there; give a directory train/patchdrop.py wrote")
    recorded = json.loads(recorded_path.read_text(encoding="utf-8"))
    for key in ("seeds", "keep_ratios", "contenders"):
        recorded[key] = tuple(recorded[key])
    recorded["resume"] = str(run_dir)
    return Args(**recorded), run_dir


def main(args: Args) -> Path:
    args, run_dir = open_run(args)
    common.set_threads(args.threads)
    check_args(args)
    parts = run_dir / "parts"
    parts.mkdir(exist_ok=True)
    print(f"run directory: {run_dir}", flush=True)
    for seed in args.seeds:
        model = None
        for name in [c for c in CONTENDER_ORDER if c in args.contenders]:
            part = parts / f"{name}-s{seed}.json"
            if part.is_file():
                continue
            if name == "learned" and model is None:
                model = train_agent(args, seed, run_dir)
            learned = parts / f"learned-s{seed}.json"
            learned_keep = json.loads(learned.read_text())["mean_keep"] if learned.is_file() else None
            start = time.perf_counter()
            common.seed_everything(seed)
            summary, rows = run_contender(name, args, seed, model, learned_keep, run_dir)
            _write_parquet(pd.DataFrame(rows).assign(contender=name, seed=seed), parts / f"{name}-s{seed}.parquet")
            atomic_write_text(part, json.dumps(summary, indent=1) + "\n")
            print(
                f"seed {seed} {name:>8}: val top-1 {100 * summary['val_top1']:.1f}%, test {100 * summary['test_top1']:.1f}% "
                f"(kept {100 * summary['test_top1_kept']:.1f}% at {summary['final_keep']:.2f}), mean keep "
                f"{summary['mean_keep']:.3f}, {summary['train_images_per_s']:.0f} img/s ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    report(run_dir)
    return run_dir


def report(run_dir: Path) -> None:
    """Assemble ``runs``, ``steps``, ``summary.md`` and the plot from the finished parts."""
    from analysis import patchdrop
    from analysis.plots import save_figure

    parts = run_dir / "parts"
    summaries = [json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))]
    steps = pd.concat([pd.read_parquet(p) for p in sorted(parts.glob("*.parquet"))], ignore_index=True)
    frame = patchdrop.per_run(pd.DataFrame(summaries), steps)
    _write_csv(frame, run_dir / "runs.csv")
    _write_parquet(frame, run_dir / "runs.parquet")
    _write_parquet(steps, run_dir / "steps.parquet")
    facts = patchdrop.goals(frame)
    atomic_write_text(run_dir / "summary.md", patchdrop.markdown(frame, facts))
    atomic_write_text(run_dir / "goals.json", json.dumps(facts, indent=1, default=_json_default) + "\n")
    title = f"{run_dir.name}: val top-1 vs measured training time"
    save_figure(patchdrop.plot_curves(steps, title), run_dir / "top1_vs_time", formats=("png",))
    print((run_dir / "summary.md").read_text(), flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


if __name__ == "__main__":
    main(tyro.cli(Args))
