"""The comparison of ``train/joint.py``: every contender scored on the test split and timed side by side.

Rows (``comparison.csv`` / ``comparison.md``, ``joint.json``, ``plots/joint_b<batch>.png``):

- static backbone as it came, fine-tuned (``baselines/full``), and the co-trained backbone at full depth;
- each best static subset raw and fine-tuned (``baselines/subset-<k>``), run as shorter ViTs;
- random skipping at the co-trained policy's per-image depth (each test image as many random blocks
  as the co-trained policy ran on it), raw and fine-tuned (``baselines/random``);
- the frozen-backbone policy (``frozen_dynamic_vit.safetensors``) and the co-trained one
  (``dynamic_vit.safetensors``).

Speed: one model per distinct computation (a fine-tuned subset computes what its raw subset does),
interleaved call by call in one process (:func:`vitskip_env.measure.compare_speed`), medians.
The targets of the co-training issue are computed from these rows (:func:`targets`): the co-trained
policy against the equally fine-tuned static backbone, and against the fine-tuned static front
interpolated at the policy's measured images/s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vitskip_env.files import atomic_path, atomic_write_text


def contenders(args: Any, run_dir: Path, teacher: Any, student: Any, state: Any) -> list[dict[str, Any]]:
    """``[{name, family, model, masks, speed_key, rl_steps, backbone_steps}]`` of every contender present."""
    from agents.nsga2 import str_to_mask
    from vitskip_env import DynamicViT
    from vitskip_env.model import load_backbone

    device = next(teacher.parameters()).device
    rl_total = args.first_rl_steps + args.rounds * args.rl_steps
    steps = args.backbone_steps
    base = run_dir / "baselines"
    rows: list[dict[str, Any]] = [
        dict(name="static", family="static", model=teacher, masks=None, speed_key="static", rl_steps=0, backbone_steps=0),
    ]
    if (base / "full.safetensors").is_file():
        full = load_backbone(base / "full.safetensors", device=device)
        rows.append(dict(name="static, fine-tuned", family="static, fine-tuned", model=full, masks=None,
                         speed_key="static", rl_steps=0, backbone_steps=steps))  # fmt: skip
    for k, entry in state.data.get("baseline_paths", {}).get("subsets", {}).items():
        raw = teacher.pruned(str_to_mask(entry["mask"]))
        rows.append(dict(name=f"subset {entry['mask']} ({k} blocks)", family="static subsets", model=raw, masks=None,
                         speed_key=f"subset-{k}", rl_steps=0, backbone_steps=0))  # fmt: skip
        ft = base / f"subset-{k}.safetensors"
        if ft.is_file():
            rows.append(dict(name=f"subset {entry['mask']} ({k} blocks), fine-tuned", family="static, fine-tuned",
                             model=load_backbone(ft, device=device), masks=None, speed_key=f"subset-{k}", rl_steps=0,
                             backbone_steps=steps))  # fmt: skip
    rows.append(dict(name="random at the policy's depth", family="random", model=teacher, masks="random",
                     speed_key="random", rl_steps=0, backbone_steps=0))  # fmt: skip
    if (base / "random.safetensors").is_file():
        rows.append(dict(name="random at the policy's depth, fine-tuned", family="random, fine-tuned",
                         model=load_backbone(base / "random.safetensors", device=device), masks="random",
                         speed_key="random", rl_steps=0, backbone_steps=steps))  # fmt: skip
    rows.append(dict(name="co-trained backbone, all blocks", family="static, fine-tuned", model=student, masks=None,
                     speed_key="static", rl_steps=0, backbone_steps=steps))  # fmt: skip
    frozen = DynamicViT.load(run_dir / "frozen_dynamic_vit.safetensors", device=device).eval()
    rows.append(dict(name="policy, frozen backbone", family="policy", model=frozen, masks=None,
                     speed_key="policy, frozen backbone", rl_steps=args.first_rl_steps, backbone_steps=0))  # fmt: skip
    cotrained = DynamicViT.load(run_dir / "dynamic_vit.safetensors", device=device).eval()
    rows.append(dict(name="policy, co-trained", family="policy", model=cotrained, masks=None,
                     speed_key="policy, co-trained", rl_steps=rl_total, backbone_steps=steps))  # fmt: skip
    return rows + budget_rows(args, device)


def budget_rows(args: Any, device: Any) -> list[dict[str, Any]]:
    """The budget-conditioned model of ``--budget-model`` at ``--budget-points`` compute weights (one model each)."""
    if args.budget_model is None:
        return []
    from vitskip_env import DynamicViT
    from vitskip_env.deploy.budget import log_spaced

    probe = DynamicViT.load(args.budget_model, device=device)
    if probe.budget_range is None:
        raise ValueError(f"--budget-model {args.budget_model} has no compute knob (train it with --budget-range)")
    summary = Path(args.budget_model).with_name("summary.json")  # its run directory's, when it has one
    trained = int(json.loads(summary.read_text(encoding="utf-8")).get("total_timesteps", 0)) if summary.is_file() else 0
    rows = []
    for w in log_spaced(probe.budget_range, args.budget_points):
        model = DynamicViT.load(args.budget_model, device=device).eval().set_compute_weight(w)
        rows.append(dict(name=f"budget-conditioned, cw {w:.3g}", family="budget-conditioned (one model)", model=model,
                         masks=None, speed_key=f"budget {w:.4g}", rl_steps=trained, backbone_steps=0))  # fmt: skip
    return rows


def write_report(args: Any, run_dir: Path, teacher: Any, student: Any, state: Any) -> dict[str, Any]:
    """Score, time, and write ``comparison.csv`` / ``.md``, ``joint.json`` and the plots; returns ``joint.json``'s dict."""
    from vitskip_env import make_dataset
    from vitskip_env.measure import compare_speed, score
    from vitskip_env.measure.contenders import random_masks_like

    device = next(teacher.parameters()).device
    test = make_dataset(state.data["dataset"], "test", args.data_root, False, device)
    rows = contenders(args, run_dir, teacher, student, state)
    cotrained = next(r["model"] for r in rows if r["name"] == "policy, co-trained")
    n = args.final_eval_images
    executed = score(cotrained, test, n_images=n, per_image=True).executed
    assert executed is not None
    random_masks = random_masks_like(executed, seed=args.seed)
    for r in rows:
        s = score(r["model"], test, n_images=n, masks=random_masks if r["masks"] == "random" else None)
        r["top1"], r["executed_blocks"] = s.top1, s.executed_blocks
        r["test_images"] = s.n_images
    speed = {}
    for bs in args.speed_batch_sizes:
        speed[bs] = time_contenders(rows, test, bs, args.speed_rounds, executed, args.seed, compare_speed, random_masks_like)
    table = pd.DataFrame([{k: v for k, v in r.items() if k not in ("model", "masks")} for r in rows])
    for bs, by_key in speed.items():
        table[f"images_per_s_b{bs}"] = [by_key[k]["images_per_s"] for k in table["speed_key"]]
        table[f"speedup_b{bs}"] = [by_key[k]["speedup"] for k in table["speed_key"]]
    result = {
        "env": args.env, "seed": args.seed, "depth": teacher.depth, "threads": torch.get_num_threads(),
        "device": str(device), "test_images": int(table["test_images"].iloc[0]), "phases_seconds": state.data["seconds"],
        "backbone_steps": args.backbone_steps, "rl_steps": args.first_rl_steps + args.rounds * args.rl_steps,
        "recipe": {"batch_size": args.batch_size, "lr": args.lr, "distill": args.distill},
        "rows": table.to_dict("records"), "targets": targets(table, teacher.depth, args.speed_batch_sizes),
    }  # fmt: skip
    with atomic_path(run_dir / "comparison.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(run_dir / "joint.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(run_dir / "comparison.md", markdown(result, args))
    plot(table, run_dir / "plots", args.speed_batch_sizes)
    return result


def time_contenders(
    rows: list[dict[str, Any]],
    test: Any,
    bs: int,
    rounds: int,
    executed: torch.Tensor,
    seed: int,
    compare_speed: Any,
    random_masks_like: Any,
) -> dict[str, dict[str, float]]:
    """Images/s of each distinct computation at batch ``bs``, interleaved (the first row's model is the baseline)."""
    from vitskip_env.measure.speed import timing_batches

    batches = timing_batches(test, bs)
    masks = {id(x): random_masks_like(executed[i * bs : (i + 1) * bs], seed + i) for i, x in enumerate(batches)}
    models: dict[str, Any] = {}
    for r in rows:
        key, model = r["speed_key"], r["model"]
        if key in models:
            continue
        if r["masks"] == "random":
            models[key] = lambda x, m=model: m(x, execute_mask=masks[id(x)])
        else:
            models[key] = model
    with torch.inference_mode():
        return compare_speed(models, batches, rounds=rounds, baseline="static")


def front_at(points: pd.DataFrame, speed: float) -> tuple[float, str]:
    """Top-1 of a static front at ``speed`` images/s: linear between its neighbours, else its nearest end (and how)."""
    pts = points.sort_values("speed")
    xs, ys = pts["speed"].to_numpy(), pts["top1"].to_numpy()
    # the front: the best top-1 available at this speed or faster
    best = np.maximum.accumulate(ys[::-1])[::-1]
    if speed <= xs[0]:
        return float(best[0]), "at least as fast"
    if speed > xs[-1]:
        return float(ys[-1]), "faster than every static point (compared with the fastest)"
    return float(np.interp(speed, xs, best)), "interpolated"


def targets(table: pd.DataFrame, depth: int, batch_sizes: Any) -> dict[str, Any]:
    """The issue's measures, for the co-trained and the frozen policy."""
    out: dict[str, Any] = {}
    ft = table[table["family"] == "static, fine-tuned"]
    full_ft = table[table["name"] == "static, fine-tuned"]
    for name in ("policy, co-trained", "policy, frozen backbone"):
        pol = table[table["name"] == name]
        if not len(pol):
            continue
        p = pol.iloc[0]
        entry: dict[str, Any] = {"top1": float(p["top1"]), "executed_blocks": float(p["executed_blocks"]),
                                 "executed_frac": float(p["executed_blocks"]) / depth}  # fmt: skip
        if len(full_ft):
            entry["minus_full_finetuned"] = float(p["top1"] - full_ft.iloc[0]["top1"])
        for bs in batch_sizes:
            pts = ft.rename(columns={f"images_per_s_b{bs}": "speed"})[["speed", "top1"]]
            if len(pts):
                top1, how = front_at(pts, float(p[f"images_per_s_b{bs}"]))
                entry[f"b{bs}"] = {"speedup": float(p[f"speedup_b{bs}"]), "static_ft_front_top1": top1,
                                   "margin": float(p["top1"]) - top1, "how": how}  # fmt: skip
        out[name] = entry
    return out


def markdown(result: dict[str, Any], args: Any) -> str:
    """``comparison.md``: the table and the targets."""
    bss = list(args.speed_batch_sizes)
    head = "| contender | top-1 (%) | blocks | " + " | ".join(f"img/s b{b} | x static b{b}" for b in bss)
    lines = [
        f"# {result['env']} · train/joint.py · seed {result['seed']}",
        "",
        f"`{command(args)}` ({result['threads']} threads)",
        "",
        f"Test split, {result['test_images']:,} images; {result['threads']} threads on {result['device']}; speeds are "
        f"medians of {args.speed_rounds} interleaved rounds in one process. Every fine-tuned row had the same "
        f"{result['backbone_steps']} backbone steps (batch {args.batch_size}, lr {args.lr}, distillation weight "
        f"{args.distill}, the same teacher and seed); the co-trained policy also had {result['rl_steps']:,} PPO steps, "
        f"the frozen one {args.first_rl_steps:,}.",
        "",
        f"Wall-clock ({result['threads']} threads): co-training {minutes(result, 'rl-', 'bb-'):.1f} min (PPO on the frozen "
        f"backbone {minutes(result, 'rl-0'):.1f}, backbone steps {minutes(result, 'bb-'):.1f}, PPO after them "
        f"{minutes(result, 'rl-') - minutes(result, 'rl-0'):.1f}); each baseline's fine-tune: "
        + ", ".join(
            f"{k.removeprefix('baseline-')} {v / 60:.1f}"
            for k, v in result["phases_seconds"].items()
            if k.startswith("baseline-")
        )
        + " min.",
        "",
        head + " | RL steps | backbone steps |",
        "|---|---:|---:|" + "---:|---:|" * len(bss) + "---:|---:|",
    ]
    for r in result["rows"]:
        cells = " | ".join(f"{r[f'images_per_s_b{b}']:,.0f} | {r[f'speedup_b{b}']:.2f}" for b in bss)
        lines.append(f"| {r['name']} | {r['top1']:.2f} | {r['executed_blocks']:.2f} | {cells} | {r['rl_steps']:,} | "
                     f"{r['backbone_steps']} |")  # fmt: skip
    lines += ["", "## Against the equally fine-tuned static models", ""]
    for name, t in result["targets"].items():
        lines.append(f"- **{name}**: {t['top1']:.2f} top-1 at {t['executed_blocks']:.2f} of {result['depth']} blocks "
                     f"({t['executed_frac']:.2f})" + (f"; {t['minus_full_finetuned']:+.2f} pt vs the fine-tuned static "
                     "backbone" if "minus_full_finetuned" in t else ""))  # fmt: skip
        for b in bss:
            if f"b{b}" in t:
                e = t[f"b{b}"]
                lines.append(f"  - batch {b}: {e['speedup']:.2f}x static; fine-tuned static front at its speed "
                             f"{e['static_ft_front_top1']:.2f} ({e['how']}): margin {e['margin']:+.2f} pt")  # fmt: skip
    return "\n".join(lines) + "\n"


def command(args: Any) -> str:
    """The command that reproduces the run (flags that differ from the defaults; no machine paths)."""
    import dataclasses

    skip = {"runs_dir", "resume", "threads", "device", "data_root", "download"}
    parts = ["python train/joint.py"]
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if (
            f.name in skip
            or value == f.default
            or (f.default_factory is not dataclasses.MISSING and value == f.default_factory())
        ):
            continue
        if f.name == "budget_model":
            value = f"<runs>/{Path(value).parent.name}/{Path(value).name}"
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            parts.append(f"{flag} {' '.join(map(str, value)) if isinstance(value, (tuple, list)) else value}")
    return " ".join(parts)


def minutes(result: dict[str, Any], *prefixes: str) -> float:
    """Minutes spent in the phases whose names start with any of ``prefixes`` (``"rl-0"`` is exact)."""
    secs = result["phases_seconds"]
    return sum(v for k, v in secs.items() if any(k == p or (p.endswith("-") and k.startswith(p)) for p in prefixes)) / 60


def plot(table: pd.DataFrame, out: Path, batch_sizes: Any) -> None:
    """Top-1 vs measured images/s, one figure per batch size (``plots/joint_b<batch>.png``)."""
    from analysis.plots import plot_pareto, save_figure

    out.mkdir(exist_ok=True)
    for bs in batch_sizes:
        x = f"images_per_s_b{bs}"
        fronts = {fam: g[[x, "top1", "name"]] for fam, g in table[table["family"] != "policy"].groupby("family", sort=False)}
        dynamic = table[table["family"] == "policy"][[x, "top1", "name"]]
        fig = plot_pareto(fronts, dynamic, x=x, y="top1")
        fig.axes[0].set_title(f"Top-1 vs measured images/s, batch {bs}")
        save_figure(fig, out / f"joint_b{bs}", formats=("png",))
