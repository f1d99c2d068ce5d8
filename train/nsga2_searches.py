"""The three searches of ``train/nsga2.py`` (layers, joint, rewards) and the inputs they share.

Each search runs NSGA-II, scores its front on ``test``, saves the models, writes ``front.*`` and
``summary.md`` into the output folder and returns the summary dict that ``main`` completes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import common
import numpy as np
import pandas as pd
import torch
from nsga2_report import comparison, point, save_plot

from vitskip_env.files import atomic_write_text

if TYPE_CHECKING:
    from nsga2 import Args, Progress


# ---------------------------------------------------------------------------------------- layers
def layers(args: Args, out: Path, device: torch.device, pop_size: int, n_gen: int, progress: Progress) -> dict[str, Any]:
    """Static layer subsets: NSGA-II on val (error, compute), the front scored on test and saved as
    pruned models, compared with the run's dynamic policy when there is one."""
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


# ---------------------------------------------------------------------------------------- joint
def joint(args: Args, out: Path, device: torch.device, pop_size: int, n_gen: int, progress: Progress) -> dict[str, Any]:
    """Layer subsets for the run's trained agent: fitness is the agent's RL reward skipping dynamically
    among the kept blocks; the best-reward and within-tolerance subsets are saved as models."""
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
    """Reward weightings: one short RL run per individual (``agents.nsga2.rewards``), on Dask workers."""
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
    """Split ``name`` of the env's dataset on ``device``."""
    import vitskip_env
    from vitskip_env import make_dataset

    return make_dataset(vitskip_env.ENV_IDS[args.env], name, args.data_root, False, device)


def limit(ds, n: int | None) -> int:
    """How many of ``ds``'s images to use: ``n`` capped at its size (all when ``n`` is None)."""
    if n is not None and n < 1:
        raise ValueError(f"image counts must be >= 1, got {n}")
    return len(ds) if n is None else min(n, len(ds))
