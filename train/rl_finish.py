"""The end of an RL run (``train/rl.py``): export the ``DynamicViT``, score it and the static backbone
on the test split with the one scorer, time both side by side, and write ``eval.parquet``,
``summary.json`` (no NaN: ``null``), ``summary.md`` and the skip-pattern report.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analysis.frames import from_episodes
from vitskip_env.files import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from rl import RLArgs


def write_run_report(run_dir: Path) -> Path | None:
    """Write the skip-pattern report (``report.md`` + ``plots/``); a failure only warns, the run is complete."""
    try:
        from analysis.report import write_report

        path = write_report([run_dir])
    except Exception as exc:  # the run's own files are written; the report can be made again at any time
        print(f"warning: the skip-pattern report failed ({type(exc).__name__}: {exc}); the run itself is complete.\n"
              f"Make the report with: python -m analysis.report {run_dir}", file=sys.stderr)  # fmt: skip
        return None
    print(f"report: {path}")
    return path


def finish(model: Any, env: Any, args: RLArgs, kwargs: dict[str, Any], run_dir: Path, train_seconds: float) -> dict:
    """Export the DynamicViT, evaluate it against the static backbone, write eval.parquet and the summaries."""
    from agents import evaluate_agent, export_policy
    from vitskip_env import DynamicViT, SkipExitViT, make_dataset
    from vitskip_env.measure import compare_speed, score

    backbone = env.unwrapped.backbone
    heads = env.unwrapped.exit_heads  # actions="skip_exit"
    eval_kwargs = {**kwargs, "backbone": backbone}
    ds = env.unwrapped.dataset
    test = make_dataset(ds.name, "test", args.data_root, False, backbone_device(backbone))
    budget_curve = None
    if heads is None:
        dyn = DynamicViT(backbone, export_policy(model, env)).eval()
        if dyn.budget_range is not None:
            budget_curve = calibrate_knob(dyn, ds.name, args, test)
        dyn.save(run_dir / "dynamic_vit.safetensors", env=args.env, algo=args.algo, seed=args.seed)
    else:
        dyn = SkipExitViT(backbone, heads, export_policy(model, env)).eval()
        dyn.save(run_dir / "skip_exit_vit.safetensors", env=args.env, algo=args.algo, seed=args.seed)
        eval_kwargs["exits"] = heads  # the same heads on the same backbone object
    result = evaluate_agent(model, eval_kwargs, n_images=args.final_eval_images, return_episodes=True)
    episodes = result.pop("episodes")
    _write_eval_parquet(run_dir / "eval.parquet", episodes, env.unwrapped.dataset)

    static = score(backbone, test, n_images=args.final_eval_images)
    dynamic = score(dyn, test, n_images=args.final_eval_images)
    n = static.n_images
    speed = {}
    for bs in args.speed_batch_sizes:
        batches = [test.normalize(test.images[i * bs : (i + 1) * bs]) for i in range(max(1, min(8, 2048 // bs)))]
        speed[bs] = compare_speed({"static": backbone, "dynamic": dyn}, batches, rounds=5)
    summary = {
        "env": args.env, "algo": args.algo, "seed": args.seed, "total_timesteps": int(model.num_timesteps),
        "train_minutes": round(train_seconds / 60, 2), "depth": backbone.depth, "test_images": n,
        "top1_static": static.top1, "top1_dynamic": dynamic.top1,
        "executed_blocks": dynamic.executed_blocks, "executed_frac": dynamic.executed_frac,
        "agent_top1": result["top1"], "difficulty_corr": result.get("difficulty_corr"),
        "exit_blocks": result.get("exit_blocks"), "compute_weight": dyn.compute_weight if heads is None else None,
        "budget_curve": budget_curve,
        "block_rates": result["block_rates"], "mean_return": result["mean_return"],
        "speed": {str(bs): v for bs, v in speed.items()},
        "threads": torch.get_num_threads(), "device": str(backbone_device(backbone)),
    }  # fmt: skip
    summary = _finite(summary)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    atomic_write_text(run_dir / "summary.md", _summary_md(summary))
    return summary


def calibrate_knob(dyn: Any, dataset: str, args: RLArgs, test: Any) -> list[dict[str, float]]:
    """A budget-conditioned model: calibrate its knob on the val split, score the test split at each calibrated
    weight (the accuracy-vs-blocks curve of the one model), and set it to ``--compute-weight`` (clipped to the range)."""
    from vitskip_env import make_dataset
    from vitskip_env.measure import score

    val = make_dataset(dataset, "val", args.data_root, False, backbone_device(dyn.backbone))
    n = min(len(val), args.final_eval_images or 5000)  # the val images the knob is calibrated on
    calibration = dyn.calibrate_budget(val.normalize(val.images[:n]))
    curve = []
    for w in calibration["compute_weight"]:
        s = score(dyn.set_compute_weight(w), test, n_images=args.final_eval_images)
        curve.append({"compute_weight": w, "top1": s.top1, "executed_blocks": s.executed_blocks})
    lo, hi = dyn.budget_range
    dyn.set_compute_weight(min(hi, max(lo, args.compute_weight)))
    return curve


def backbone_device(backbone: torch.nn.Module) -> torch.device:
    return next(backbone.parameters()).device


def _write_eval_parquet(path: Path, ep: dict[str, np.ndarray], dataset: Any) -> None:
    """One row per image x block: the tidy skip frame the analysis package reads (columns: ``analysis.frames``)."""
    frame = from_episodes(ep, list(dataset.classes))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _summary_md(s: dict) -> str:
    lines = [
        f"# {s['env']} · {s['algo']} · seed {s['seed']}",
        "",
        f"{s['total_timesteps']:,} env steps in {s['train_minutes']} min; test split, {s['test_images']:,} images, "
        f"deterministic policy; {s['threads']} threads on {s['device']}.",
        "",
        "| model | top-1 (%) | executed blocks | of depth |",
        "|---|---:|---:|---:|",
        f"| static backbone | {s['top1_static']:.2f} | {s['depth']} | 1.00 |",
        f"| {'SkipExitViT' if s.get('exit_blocks') is not None else 'DynamicViT'} | {s['top1_dynamic']:.2f} | "
        f"{s['executed_blocks']:.2f} | {s['executed_frac']:.2f} |",
        "",
        "| batch | static img/s | dynamic img/s | speed-up (median of interleaved rounds) |",
        "|---:|---:|---:|---:|",
    ]
    for bs, v in s["speed"].items():
        lines.append(f"| {bs} | {v['static']['images_per_s']:,.0f} | {v['dynamic']['images_per_s']:,.0f} | "
                     f"{v['dynamic']['speedup']:.2f}x |")  # fmt: skip
    if s.get("difficulty_corr") is not None:
        lines += ["", f"Rank correlation of difficulty and executed blocks: {s['difficulty_corr']:+.3f}."]
    if s.get("exit_blocks") is not None:
        lines += ["", f"Mean blocks passed before leaving (exit or final classifier): {s['exit_blocks']:.2f} of {s['depth']}."]
    if s.get("budget_curve"):
        lines += ["", f"One budget-conditioned model (saved at compute weight {s['compute_weight']:.3g}); its curve, "
                  "test split:", "", "| compute weight | top-1 (%) | executed blocks |", "|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {p['compute_weight']:.3g} | {p['top1']:.2f} | {p['executed_blocks']:.2f} |" for p in s["budget_curve"]]
    rates = " ".join(f"{r:.2f}" for r in s["block_rates"])
    lines += ["", f"Execute rate per block: {rates}", ""]
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """``value`` with every NaN / infinity (e.g. the difficulty correlation of a policy that never skips) as None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
