"""NSGA-II (pymoo) searches over a trained ViT: static layer subsets, reward weightings, joint RL + NSGA-II.

    python train/nsga2.py                            # layers on shapes/demo; compared with the newest PPO run's policy
    python train/nsga2.py --search joint             # the newest run's agent, restricted to GA-chosen blocks
    python train/nsga2.py --search rewards --dask-scheduler tcp://host:8786   # one short RL run per individual

``layers``: one bit per block (kept or removed statically), objectives top-1 error on ``val`` and the
kept share of the block FLOPs; a population is scored in one vectorised pass. With a run (``--run``,
default: the newest one of the env) the run's ``DynamicViT`` is compared with the static front on
``test`` at equal mean executed blocks (``comparison.md``/``.png``). ``joint``: the fitness of a subset
is the RL reward of the run's agent skipping dynamically among the kept blocks. ``rewards``: see
``agents.nsga2.rewards``.

Writes ``--out`` (default ``runs/nsga2__<search>__<seed>__<time>``): ``args.yaml``, ``front.parquet`` /
``front.csv``, ``front.png``, ``summary.md`` / ``summary.json``, ``models/`` (every front subset as a
loadable model) and, for ``layers`` with a run, ``comparison.md`` / ``comparison.png``. Ctrl-C writes
the front of the last completed generation and exits with status 130.

This script parses the flags and runs one search; the searches are in ``train/nsga2_searches.py``
and the dynamic-vs-static comparison and plots in ``train/nsga2_report.py``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import common
import pandas as pd
import torch
import tyro
import yaml
from nsga2_searches import joint, layers, rewards

from vitskip_env.files import atomic_write_text

DEFAULT_SIZES = {"layers": (24, 10), "joint": (16, 8), "rewards": (8, 3)}


@dataclass
class Args:
    search: Literal["layers", "rewards", "joint"] = "layers"
    """what NSGA-II searches: static layer subsets, reward weightings, or layer subsets for a trained agent"""
    env: str = "ViTSkip-Shapes-v0"
    """registered environment id (its dataset and default backbone)"""
    pop_size: int | None = None
    """population size (default: 24 layers, 16 joint, 8 rewards)"""
    n_gen: int | None = None
    """generations (default: 10 layers, 8 joint, 3 rewards)"""
    seed: int = 0
    """pymoo seed (the same seed gives the same front)"""
    device: str = "auto"
    """cpu, cuda or auto"""
    out: str | None = None
    """output folder (default: <runs-dir>/nsga2__<search>__<seed>__<time>)"""
    run: str | None = None
    """run directory of a trained agent (dynamic_vit.safetensors + args.yaml) for joint and the layers comparison
    (default: the newest run of --env under --runs-dir)"""
    compare: bool = True
    """layers: compare the run's dynamic policy with the static front on test (skipped when there is no run)"""
    backbone: str | None = None
    """layers: backbone file or preset (default: the run's backbone, else the env's default)"""
    val_images: int | None = 2000
    """fitness images: the first N of the val split (None: all)"""
    test_images: int | None = None
    """test images for the reported test top-1 (default: all)"""
    min_blocks: int = 1
    """fewest kept blocks of a subset"""
    cost_model: Literal["flops", "latency"] = "flops"
    """layers: compute objective, share of block FLOPs or of measured block latency"""
    batch_size: int = 256
    """images per chunk of the vectorised scorer (larger on a GPU)"""
    cache_mb: float = 1024.0
    """layers/joint: MiB (on --device) of prefix token states kept between generations (0 = off; scores do not change)"""
    finetune_steps: int = 0
    """layers: AdamW steps fine-tuning every front subset on the train split (0 = no fine-tune)"""
    finetune_lr: float = 3e-4
    """layers: fine-tuning learning rate"""
    tolerance: float = 1.0
    """top-1 points (val) a chosen subset may lose against the full model"""
    exhaustive_max_depth: int = 10
    """layers comparison: also score every subset (the exact static front) when the depth is at most this"""
    budget_steps: int = 60_000
    """rewards: environment steps of each individual's RL run"""
    algo: str = "ppo"
    """rewards: agent trained for each individual"""
    dask_scheduler: str | None = None
    """rewards: address of a Dask scheduler (default: a local cluster)"""
    n_workers: int = 2
    """rewards: local Dask workers (0 = serial in this process)"""
    data_root: str | None = None
    """folder of real datasets (default $VITSKIP_DATA or the user cache)"""
    runs_dir: str = "runs"
    """where output folders and training runs are"""
    threads: int | None = None
    """CPU threads (default: all; rewards: torch threads per Dask worker, default 1)"""


def main(args: Args) -> Path:
    """Run the search, write the output folder and return it."""
    import vitskip_env

    if args.env not in vitskip_env.ENV_IDS:
        raise ValueError(f"unknown env {args.env!r}; registered: {sorted(vitskip_env.ENV_IDS)}")
    if not args.cache_mb >= 0:
        raise ValueError(
            f"--cache-mb must be >= 0 (MiB of prefix states kept between generations, 0 = off), got {args.cache_mb}"
        )
    pop_size = args.pop_size if args.pop_size is not None else DEFAULT_SIZES[args.search][0]
    n_gen = args.n_gen if args.n_gen is not None else DEFAULT_SIZES[args.search][1]
    common.set_threads(args.threads)
    common.seed_everything(args.seed)
    device = common.resolve_device(args.device)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path(args.runs_dir) / f"nsga2__{args.search}__{args.seed}__{stamp}"
    if (out / "front.parquet").exists():
        raise FileExistsError(f"{out} already holds a search (front.parquet); give a new --out or delete that folder first")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "args.yaml", yaml.safe_dump(dataclasses.asdict(args), sort_keys=False))
    print(f"NSGA-II {args.search} search on {args.env}: population {pop_size}, {n_gen} generations, seed {args.seed}, "
          f"{device}, {torch.get_num_threads()} threads -> {out}")  # fmt: skip
    progress = Progress(n_gen, args.search)
    try:
        if args.search == "layers":
            summary = layers(args, out, device, pop_size, n_gen, progress)
        elif args.search == "joint":
            summary = joint(args, out, device, pop_size, n_gen, progress)
        else:
            summary = rewards(args, out, pop_size, n_gen, progress)
    except KeyboardInterrupt:
        done = f"the front after generation {progress.generation} is in {out / 'front.parquet'}"
        print(f"\ninterrupted: {done if progress.generation else 'no generation completed, nothing written'}")
        raise SystemExit(130) from None
    summary |= {"search": args.search, "env": args.env, "pop_size": pop_size, "n_gen": n_gen, "seed": args.seed,
                "device": str(device), "threads": torch.get_num_threads(), "seconds": round(progress.elapsed(), 1),
                "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    text = (out / "summary.md").read_text(encoding="utf-8")
    print(text)
    print(f"output folder: {out}")
    return out


class Progress:
    """Per-generation progress line (generation, evaluations, front size, best point, elapsed)."""

    def __init__(self, n_gen: int, search: str) -> None:
        self.n_gen, self.search, self.generation, self.t0 = n_gen, search, 0, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, generation: int, evaluations: int | None, front: pd.DataFrame) -> None:
        self.generation = generation
        if self.search == "joint":
            best = f"best reward {front['reward'].max():.4f}" if len(front) else "no feasible subset yet"
        else:
            cheap = front[front["compute"] <= 0.75]
            best = f"best error at <= 75% compute {cheap['error'].min():.2f}%" if len(cheap) else "none at <= 75% compute"
        evals = f"{evaluations} evaluations | " if evaluations is not None else ""
        print(f"gen {generation}/{self.n_gen} | {evals}front {len(front)} | {best} | {self.elapsed():.0f}s", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
