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
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import common
import numpy as np
import pandas as pd
import torch
import tyro
import yaml

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


# ---------------------------------------------------------------------------------------- layers
def layers(args: Args, out: Path, device: torch.device, pop_size: int, n_gen: int, progress: Progress) -> dict[str, Any]:
    from agents.nsga2 import LayerSubsetProblem, evaluate_subsets, search_layers, str_to_mask, write_front
    from agents.nsga2.summaries import layers_markdown

    run_dir = find_run(args, required=False) if args.compare or args.run else None
    if run_dir is not None and args.backbone is not None:
        raise ValueError(
            "--backbone with a run to compare against: the comparison needs the run's own backbone; "
            "drop --backbone or pass --no-compare"
        )
    dyn = load_dynamic(run_dir, device, args.env) if run_dir is not None else None
    backbone = dyn.backbone if dyn is not None else load_env_backbone(args, device)
    val, test = split(args, "val", device), split(args, "test", device)
    nv, nt = limit(val, args.val_images), limit(test, args.test_images)
    problem = LayerSubsetProblem(
        backbone, val.images[:nv], val.labels[:nv], dataset=val, min_blocks=args.min_blocks,
        cost_model=args.cost_model, batch_size=args.batch_size, cache_mb=args.cache_mb,
    )  # fmt: skip
    front = search_layers(problem, pop_size=pop_size, n_gen=n_gen, seed=args.seed, out_dir=out, callback=progress)
    search_seconds = progress.elapsed()

    requested, scored_subsets = problem.requested, len(problem.scores)
    full = np.ones(backbone.depth, dtype=bool)
    full_val = 100.0 - float(problem.objectives(full[None])[0, 0])
    masks = np.stack([*(str_to_mask(k) for k in front["kept"]), full])
    scored = evaluate_subsets(backbone, masks, test.images[:nt], test.labels[:nt], dataset=test, batch_size=args.batch_size)
    front["top1_test"] = scored["top1"][:-1].numpy()
    front["model"] = save_subsets(args, backbone, front, out, device, (val, nv), (test, nt))
    write_front(front, out)

    key = "top1_ft" if args.finetune_steps else "top1"
    chosen = choose_subset(front, key, full_val - args.tolerance)
    summary: dict[str, Any] = {
        "depth": backbone.depth, "val_images": nv, "test_images": nt, "full_top1_val": full_val,
        "full_top1_test": float(scored["top1"][-1]), "finetune_steps": args.finetune_steps,
        "subsets_scored": scored_subsets, "subsets_requested": requested,
        "search_seconds": round(search_seconds, 1), "scoring_seconds": round(problem.eval_seconds, 1),
        "prefix_cache": problem.cache.stats(), "chosen": None if chosen is None else chosen.to_dict(),
        "front": front.to_dict("records"),
    }  # fmt: skip
    dynamic = None
    if dyn is not None:
        summary["comparison"] = comparison(dyn, problem, front, (test, nt), args, out, run_dir)
        d = summary["comparison"]["dynamic"]
        dynamic = point("dynamic policy (test)", d["executed_blocks"], d["top1_test"])
    save_plot({"static subsets (val)": front, "static subsets (test)": front.assign(top1=front["top1_test"])}, dynamic,
              out / "front.png")  # fmt: skip
    text = layers_markdown(summary, env=args.env, seed=args.seed, tolerance=args.tolerance, cost_model=args.cost_model)
    atomic_write_text(out / "summary.md", text)
    return summary


def save_subsets(args: Args, backbone, front: pd.DataFrame, out: Path, device: torch.device, val, test) -> list[str]:
    """Every front subset as a pruned backbone in ``out/models`` (fine-tuned first with ``--finetune-steps``)."""
    from agents.nsga2 import evaluate_subsets, finetune, str_to_mask

    train = split(args, "train", device) if args.finetune_steps else None
    paths = []
    for row in front.itertuples():
        model = backbone.pruned(str_to_mask(row.kept))
        meta = {"source": "train/nsga2.py --search layers", "top1_val": row.top1, "top1_test": row.top1_test}
        if train is not None:
            finetune(model, train, steps=args.finetune_steps, lr=args.finetune_lr, seed=args.seed)
            ones = np.ones((1, model.depth), dtype=bool)
            top1 = [
                float(evaluate_subsets(model, ones, ds.images[:n], ds.labels[:n], dataset=ds)["top1"][0])
                for ds, n in (val, test)
            ]
            front.loc[row.Index, ["top1_ft", "top1_test_ft"]] = top1
            meta |= {"top1_val": top1[0], "top1_test": top1[1], "finetune_steps": args.finetune_steps}
            print(f"fine-tuned `{row.kept}` ({model.depth} blocks, {args.finetune_steps} steps): val {row.top1:.2f} -> "
                  f"{top1[0]:.2f}, test {row.top1_test:.2f} -> {top1[1]:.2f}", flush=True)  # fmt: skip
        path = Path("models") / f"subset-{row.kept}.safetensors"
        model.save(out / path, **meta)
        paths.append(path.as_posix())
    return paths


def choose_subset(front: pd.DataFrame, key: str, floor: float) -> pd.Series | None:
    """The front subset with the fewest kept blocks whose ``key`` top-1 is at least ``floor`` (best top-1 on ties)."""
    ok = front[front[key] >= floor]
    if not len(ok):
        return None
    return ok.sort_values(["kept_blocks", key], ascending=[True, False]).iloc[0]


def comparison(dyn, problem, front: pd.DataFrame, test, args: Args, out: Path, run_dir: Path) -> dict[str, Any]:
    """The run's dynamic policy against the best static subsets on test, at equal mean executed blocks.

    The static reference is the exact front (every subset scored on val) when the depth is at most
    ``--exhaustive-max-depth``, else the NSGA-II front; which one, and where the two differ, is reported.
    """
    from agents.nsga2 import evaluate_subsets, str_to_mask
    from agents.nsga2.compare import compare_dynamic_static, comparison_markdown, static_envelope
    from agents.nsga2.joint import evaluate_joint

    depth, (tds, nt) = dyn.depth, test
    full = np.ones((1, depth), dtype=bool)
    on_val = evaluate_joint(dyn, full, problem.images, problem.labels, dataset=problem.dataset, batch_size=args.batch_size)
    on_test = evaluate_joint(dyn, full, tds.images[:nt], tds.labels[:nt], dataset=tds, batch_size=args.batch_size)
    dynamic = {
        "top1": float(on_val["top1"][0]), "top1_test": float(on_test["top1"][0]),
        "executed_blocks": float(on_test["executed_blocks"][0]), "executed_blocks_val": float(on_val["executed_blocks"][0]),
    }  # fmt: skip
    static, source, notes = front, "the NSGA-II front", ""
    if depth <= args.exhaustive_max_depth:
        every = np.array([[(i >> b) & 1 for b in range(depth)] for i in range(1, 2**depth)], dtype=bool)
        problem.objectives(every)  # scores the subsets the search did not visit
        static = problem.front()
        masks = np.stack([str_to_mask(k) for k in static["kept"]])
        static["top1_test"] = evaluate_subsets(dyn.backbone, masks, tds.images[:nt], tds.labels[:nt], dataset=tds,
                                               batch_size=args.batch_size)["top1"].numpy()  # fmt: skip
        source = f"the exact front (all {len(every)} subsets scored on val)"
        ga = static_envelope(front, depth).set_index("k")["top1"]
        exact = static_envelope(static, depth).set_index("k")["top1"]
        missed = [int(k) for k in exact.index if ga.get(k, -math.inf) < exact[k]]  # a tie on val is not a miss
        notes = f"The NSGA-II front missed the val-best subset of size(s) {missed}. " if missed else (
            "The NSGA-II front holds the val-best subset of every size. ")  # fmt: skip
    result = compare_dynamic_static(static, dynamic, depth)
    finetuned, note = None, f"NSGA-II front's subsets fine-tuned for {args.finetune_steps} steps"
    if args.finetune_steps:  # extra training the policy's backbone did not get: reported beside, not instead
        finetuned = compare_dynamic_static(
            front.assign(top1=front["top1_ft"], top1_test=front["top1_test_ft"]), dynamic, depth
        )
    nv = len(problem.labels)
    notes += f"Dynamic policy: `{run_dir.as_posix()}/dynamic_vit.safetensors`; {nt:,} test images, {nv:,} val images."
    text = comparison_markdown(result, title="Per-image skipping vs static subsets", source=source, finetuned=finetuned,
                               finetune_note=note, notes=notes)  # fmt: skip
    atomic_write_text(out / "comparison.md", text)
    curves = {"best static subset of each size (test)": result["envelope"]}
    if finetuned is not None:
        curves[f"... fine-tuned {args.finetune_steps} steps (test)"] = finetuned["envelope"]
    curves = {k: e.assign(top1=e["top1_test"], executed_blocks=e["kept_blocks"].astype(float)) for k, e in curves.items()}
    save_plot(curves, point("dynamic policy (test)", dynamic["executed_blocks"], dynamic["top1_test"]), out / "comparison.png")
    report = {**result, "envelope": result["envelope"].to_dict("records"), "static_source": source}
    if finetuned is not None:
        report["finetuned"] = {**finetuned, "envelope": finetuned["envelope"].to_dict("records"), "dynamic": None}
    return report


# ---------------------------------------------------------------------------------------- joint
def joint(args: Args, out: Path, device: torch.device, pop_size: int, n_gen: int, progress: Progress) -> dict[str, Any]:
    from agents.nsga2 import (
        JointSubsetProblem,
        SubsetDynamicViT,
        evaluate_joint,
        reward_weights,
        search_joint,
        str_to_mask,
        write_front,
    )
    from agents.nsga2.summaries import joint_markdown

    run_dir = find_run(args, required=True)
    dyn = load_dynamic(run_dir, device, args.env)
    weights = reward_weights(run_dir)
    val, test = split(args, "val", device), split(args, "test", device)
    nv, nt = limit(val, args.val_images), limit(test, args.test_images)
    problem = JointSubsetProblem(
        dyn, val.images[:nv], val.labels[:nv], dataset=val, weights=weights, min_blocks=args.min_blocks,
        batch_size=args.batch_size, cache_mb=args.cache_mb,
    )  # fmt: skip
    front = search_joint(problem, pop_size=pop_size, n_gen=n_gen, seed=args.seed, out_dir=out, callback=progress)
    search_seconds = progress.elapsed()

    full = "1" * dyn.depth
    masks = np.stack([*(str_to_mask(k) for k in front["kept"]), str_to_mask(full)])
    on_test = evaluate_joint(dyn, masks, test.images[:nt], test.labels[:nt], dataset=test, weights=weights,
                             batch_size=args.batch_size)  # fmt: skip
    tested = {f"{name}_test": on_test[name].numpy() for name in ("top1", "reward", "executed_blocks")}
    front = front.assign(**{name: values[:-1] for name, values in tested.items()})
    problem.score(str_to_mask(full)[None])
    reference = {"kept": full, **problem.scores[full], **{name: float(values[-1]) for name, values in tested.items()}}
    best = front.sort_values(["reward", "kept_blocks"], ascending=[False, True]).iloc[0]
    within = choose_subset(front, "top1", reference["top1"] - args.tolerance)
    models = {}
    for row in (best, within):
        if row is not None and row["kept"] not in models:
            path = Path("models") / f"joint-{row['kept']}.safetensors"
            model = SubsetDynamicViT(dyn, str_to_mask(row["kept"]))
            model.save(out / path, source="train/nsga2.py --search joint", top1_val=row["top1"], top1_test=row["top1_test"])
            models[row["kept"]] = path.as_posix()
    front["model"] = [models.get(k, "") for k in front["kept"]]
    write_front(front, out)
    pick = {
        k: None if r is None else {**r.to_dict(), "model": models[r["kept"]]}
        for k, r in (("best_reward", best), ("within", within))
    }
    summary: dict[str, Any] = {
        "run": run_dir.as_posix(), "weights": weights, "depth": dyn.depth, "val_images": nv, "test_images": nt,
        "subsets_scored": len(problem.scores), "subsets_requested": problem.requested,
        "search_seconds": round(search_seconds, 1), "scoring_seconds": round(problem.eval_seconds, 1),
        "prefix_cache": problem.cache.stats(), "unrestricted": reference, **pick, "front": front.to_dict("records"),
    }  # fmt: skip
    agent = pd.concat([
        point("agent, all blocks (val)", reference["executed_blocks"], reference["top1"]),
        point("agent, all blocks (test)", reference["executed_blocks_test"], reference["top1_test"]),
    ])  # fmt: skip
    test_front = front.assign(top1=front["top1_test"], executed_blocks=front["executed_blocks_test"])
    save_plot({"joint front (val)": front, "joint front (test)": test_front}, agent, out / "front.png")
    atomic_write_text(out / "summary.md", joint_markdown(summary, env=args.env, seed=args.seed, tolerance=args.tolerance))
    return summary


# ---------------------------------------------------------------------------------------- rewards
def rewards(args: Args, out: Path, pop_size: int, n_gen: int, progress: Progress) -> dict[str, Any]:
    from agents.nsga2.rewards import search_rewards
    from agents.nsga2.summaries import md_table

    front = search_rewards(
        args.env, out_dir=out, pop_size=pop_size, n_gen=n_gen, seed=args.seed, device=args.device,
        budget_steps=args.budget_steps, algo=args.algo, val_images=args.val_images, test_images=args.test_images,
        dask_scheduler=args.dask_scheduler, n_workers=args.n_workers, threads_per_worker=args.threads or 1,
        env_kwargs=None if args.data_root is None else {"data_root": args.data_root},
        callback=lambda g, f: progress(g, None, f),
    )  # fmt: skip
    test = front.assign(top1=front["top1_test"], executed_frac=front["executed_frac_test"])
    save_plot({"reward weightings (val)": front, "reward weightings (test)": test}, None, out / "front.png", x="executed_frac")
    cols = ["compute_weight", "accuracy_weight", "confidence_weight", "ent_coef", "top1", "executed_frac", "top1_test",
            "executed_frac_test", "model"]  # fmt: skip
    cols = [c for c in cols if c in front.columns]
    rows = [[f"{v:.4g}" if isinstance(v, float) else v for v in row] for row in front[cols].itertuples(index=False)]
    text = "\n".join([f"# NSGA-II reward-weighting search · {args.env} · seed {args.seed}", "", *md_table(cols, rows)])
    atomic_write_text(out / "summary.md", text + "\n")
    return {"front": front.to_dict("records")}


# ---------------------------------------------------------------------------------------- helpers
def find_run(args: Args, *, required: bool) -> Path | None:
    """``--run``, else the newest run of ``--env`` under ``--runs-dir`` holding a ``dynamic_vit.safetensors``."""
    if args.run is not None:
        run = Path(args.run)
        if not (run / "dynamic_vit.safetensors").is_file():
            raise FileNotFoundError(f"--run {run}: no dynamic_vit.safetensors there; pass a run folder made by train/ppo.py")
        return run
    run = common.newest_run(args.runs_dir, args.env)
    if run is not None:
        return run
    if required:
        raise FileNotFoundError(
            f"no trained run of {args.env} under {args.runs_dir}/ (a folder with dynamic_vit.safetensors); "
            f"train one with `python train/ppo.py --env {args.env}` or pass --run RUN_DIR"
        )
    print(f"no trained run of {args.env} under {args.runs_dir}/: the dynamic-vs-static comparison is skipped")
    return None


def load_dynamic(run_dir: Path, device: torch.device, env_id: str):
    """The run's ``DynamicViT``; refused when it was trained on another env than the one searched."""
    from vitskip_env import DynamicViT

    dyn = DynamicViT.load(run_dir / "dynamic_vit.safetensors", device=device)
    trained_on = dyn.meta.get("env")
    if trained_on and trained_on != env_id:
        raise ValueError(f"--run {run_dir} was trained on {trained_on}, but the search is on --env {env_id}; "
                         f"pass --env {trained_on} or a run of {env_id}")  # fmt: skip
    return dyn


def load_env_backbone(args: Args, device: torch.device):
    """``--backbone`` or the env's default backbone, for the env's dataset."""
    from vitskip_env.env.options import resolve_backbone

    return resolve_backbone(args.backbone, "trained", split(args, "val", device), device).to(device).eval()


def split(args: Args, name: str, device: torch.device):
    import vitskip_env
    from vitskip_env import make_dataset

    return make_dataset(vitskip_env.ENV_IDS[args.env], name, args.data_root, False, device)


def limit(ds, n: int | None) -> int:
    if n is not None and n < 1:
        raise ValueError(f"image counts must be >= 1, got {n}")
    return len(ds) if n is None else min(n, len(ds))


def point(name: str, blocks: float, top1: float) -> pd.DataFrame:
    """One labelled point for :func:`analysis.plots.plot_pareto`'s ``dynamic`` markers."""
    return pd.DataFrame([{"name": name, "executed_blocks": blocks, "top1": top1}])


def save_plot(fronts: dict[str, pd.DataFrame], dynamic: pd.DataFrame | None, path: Path, x: str = "executed_blocks") -> None:
    from analysis.plots import plot_pareto, save_figure

    save_figure(plot_pareto(fronts, dynamic, x=x, y="top1"), path, formats=("png",))


if __name__ == "__main__":
    main(tyro.cli(Args))
