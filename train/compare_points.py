"""The contenders of ``train/compare.py``: every method a practitioner would pick, as ``Point`` s.

On a task (``--env``): the static backbone; the best static subset of every size (exhaustive on
``val``), run as shorter ViTs; token merging at each ``--tome-r``; the four threshold exit rules
swept over their knob with LGViT heads (``--exits``); and from each co-training run
(``train/joint.py``, ``--joint-runs``): the equally fine-tuned full backbone and subsets, random
skipping at the RL policy's per-image depth, the RL skip-only policy on the frozen backbone, the
co-trained policy and the co-trained policy with token merging (``--merge``); the RL skip+exit runs
(``--exit-runs``) and each budget-conditioned model at ``--budget-points`` weights
(``--budget-models``). Not given: found under ``--runs-dir`` / the cache for this env
(``--no-discover`` turns that off).

With ``--arch`` (speed only): random-weight models of that geometry at matched FLOPs: static,
the first-k-block static subsets, random skipping, the random-weight ``DynamicViT`` at each
``--fractions``, token merging at the ``r`` whose counted FLOPs come closest to each fraction, and
skipping with merging.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
import yaml

from vitskip_env.files import cache_dir
from vitskip_env.measure.plane import Point

#: The threshold sweep of each exit rule (LGViT heads): knob values from eager to cautious.
EXIT_SWEEP: dict[str, list[float]] = {
    "confidence": [0.6, 0.8, 0.9, 0.95, 0.99],
    "entropy": [1.0, 0.6, 0.3, 0.1],
    "patience": [2, 3, 4],
    "patient_confident": [1.0, 0.5, 0.2],
}


def shown(path: str | Path) -> str:
    """A path as a committed table may show it: ``$VITSKIP_HOME/...`` for the cache, relative to the working folder else."""
    import vitskip_env

    p = Path(path).resolve()
    home = cache_dir().resolve()
    if p.is_relative_to(home):
        return "$VITSKIP_HOME/" + str(p.relative_to(home))
    package = Path(vitskip_env.__file__).resolve().parent
    if p.is_relative_to(package):
        return "vitskip_env/" + str(p.relative_to(package))
    return str(p.relative_to(Path.cwd().resolve())) if p.is_relative_to(Path.cwd().resolve()) else p.name


def parse_merge(text: str, depth: int) -> list[int]:
    """``"2"`` (every block) or ``"6@0"`` / ``"4@0,1"`` (those blocks only) -> merges per block.

    Raises:
        ValueError: Anything else, with the accepted forms.
    """
    try:
        if "@" in text:
            r, blocks = text.split("@")
            out = [0] * depth
            for b in blocks.split(","):
                out[int(b)] = int(r)
            return out
        return [int(text)] * depth
    except (ValueError, IndexError):
        raise ValueError(
            f"--merge {text!r}: give r (every block) or r@i,j (blocks i, j only; 0 <= i < {depth}), e.g. 2 or 6@0"
        ) from None


def best_subsets(vit: Any, val: Any, n_images: int) -> dict[int, tuple[str, float]]:
    """``{k: (mask, val top-1)}``: the best fixed subset of each size ``1..depth-1``, exhaustively on ``val``."""
    from agents.nsga2 import mask_to_str
    from agents.nsga2.layers import evaluate_subsets

    depth = vit.depth
    combos = [c for k in range(1, depth) for c in combinations(range(depth), k)]
    masks = torch.zeros(len(combos), depth, dtype=torch.bool)
    for row, kept in enumerate(combos):
        masks[row, list(kept)] = True
    n = min(n_images, len(val))
    top1 = evaluate_subsets(vit, masks, val.images[:n], val.labels[:n], dataset=val)["top1"]
    best: dict[int, tuple[str, float]] = {}
    for row in range(len(combos)):
        k = int(masks[row].sum())
        if k not in best or float(top1[row]) > best[k][1]:
            best[k] = (mask_to_str(masks[row].numpy()), float(top1[row]))
    return best


def discover(args: Any, env: str, dataset: str) -> dict[str, list[Path]]:
    """Finished runs of this env under ``--runs-dir``: co-training runs, RL skip+exit runs, budget-conditioned models."""
    root = Path(args.runs_dir)
    found: dict[str, list[Path]] = {"joint": [], "exit": [], "budget": []}
    newest_joint: dict[int, Path] = {}
    for state in sorted(root.glob(f"**/{env}__joint__*/joint.json")):
        run = state.parent
        newest_joint[int(run.name.split("__")[2])] = run  # names sort by time: the newest per seed wins
    found["joint"] = [newest_joint[s] for s in sorted(newest_joint)]
    exits = exits_file(args, dataset)
    for summary in sorted(root.glob("**/summary.json")):
        run = summary.parent
        if not run.name.startswith(env + "__"):
            continue
        run_args = yaml.safe_load((run / "args.yaml").read_text(encoding="utf-8")) if (run / "args.yaml").is_file() else {}
        if (run / "skip_exit_vit.safetensors").is_file() and exits is not None and run_args.get("backbone"):
            if Path(run_args["backbone"]).resolve() == exits.resolve():
                found["exit"].append(run)
        elif run_args.get("budget_range") and (run / "dynamic_vit.safetensors").is_file():
            found["budget"].append(run)
    return found


def exits_file(args: Any, dataset: str) -> Path | None:
    """``--exits``, else the exit heads ``train/exits.py`` writes for the demo backbone of the dataset, if present."""
    if args.exits:
        return Path(args.exits)
    path = cache_dir() / "exits" / f"demo-{dataset}-exits.safetensors"
    return path if path.is_file() else None


def task_points(args: Any, dataset: str, backbone: Path, vit: Any, val: Any) -> list[Point]:
    """Every contender of a task (see the module docstring)."""
    from vitskip_env.deploy import DynamicViT
    from vitskip_env.deploy.budget import log_spaced

    bb = str(backbone)
    pts = [
        Point(
            "static backbone",
            "static",
            False,
            {"kind": "backbone", "file": bb, "speed_key": "static"},
            f"`{shown(bb)}`, every block",
        )
    ]
    if args.subsets:
        for k, (mask, val_top1) in best_subsets(vit, val, args.val_images).items():
            pts.append(
                Point(
                    f"subset {mask}",
                    "static subset",
                    False,
                    {"kind": "backbone", "file": bb, "keep": mask, "speed_key": f"subset:{mask}"},
                    f"best of the C({vit.depth},{k}) subsets on val ({val_top1:.2f}%), a {k}-block ViT",
                )
            )
    for r in args.tome_r:
        pts.append(
            Point(
                f"ToMe r={r}",
                "token merging (ToMe)",
                False,
                {"kind": "backbone", "file": bb, "r": r},
                f"ToMe, {r} tokens merged per block (schedule capped as ToMe caps it), proportional attention",
            )
        )
    discovered = discover(args, args.env, dataset) if args.discover else {"joint": [], "exit": [], "budget": []}
    exits = exits_file(args, dataset)
    if exits is not None and args.exit_sweep:
        for kind, values in EXIT_SWEEP.items():
            for v in values:
                rule = {
                    "kind": kind,
                    "threshold": None if kind == "patience" else float(v),
                    "patience": int(v) if kind == "patience" else (2 if kind == "patient_confident" else None),
                }
                label = _rule_label(rule)
                pts.append(
                    Point(
                        f"exit {label}",
                        "threshold exit (LGViT heads)",
                        False,
                        {"kind": "exit", "file": str(exits), "heads": "lgvit", "rule": rule},
                        f"`{shown(exits)}` (train/exits.py), rule {label}",
                    )
                )
    for run in [*map(Path, args.joint_runs), *discovered["joint"]]:
        pts += joint_points(args, run, bb)
    for run in map(Path, args.skip_runs):
        path = run / "dynamic_vit.safetensors" if run.is_dir() else run
        summary = path.with_name("summary.json")
        steps = json.loads(summary.read_text(encoding="utf-8")).get("total_timesteps") if summary.is_file() else None
        training = f"{steps // 1000}k PPO steps" if steps else "as trained"
        label = path.parent.name if run.is_dir() else path.stem
        source = f"`{shown(path)}` (a train/ppo.py run's DynamicViT)"
        pts.append(
            Point(f"RL skip, {label}", "vitskip: RL skip", True, {"kind": "dynamic", "file": str(path)}, source, training)
        )
        pts += merge_points(args, path, f"RL skip + ToMe {{}}, {label}", source, training)
    for run in [*map(Path, args.exit_runs), *discovered["exit"]]:
        run_args = yaml.safe_load((run / "args.yaml").read_text(encoding="utf-8"))
        heads = "linear exits" if run_args.get("exits") == "linear" else "LGViT heads"
        flag = " --exits linear" if run_args.get("exits") == "linear" else ""
        pts.append(
            Point(
                f"RL skip+exit ({heads}), cw {run_args['compute_weight']}, seed {run_args['seed']}",
                "vitskip: RL skip+exit",
                True,
                {"kind": "skip_exit", "file": str(run / "skip_exit_vit.safetensors")},
                f"`python train/ppo.py --actions skip_exit --backbone {shown(exits) if exits else '<exit file>'}{flag} "
                f"--compute-weight {run_args['compute_weight']} --seed {run_args['seed']}` ({run.name})",
                f"{run_args['total_timesteps'] // 1000}k PPO steps",
            )
        )
    for run in [*map(Path, args.budget_models), *discovered["budget"]]:
        path = run / "dynamic_vit.safetensors" if run.is_dir() else run
        probe = DynamicViT.load(path)
        seed = probe.meta.get("seed", "?")
        summary = path.with_name("summary.json")
        steps = json.loads(summary.read_text(encoding="utf-8")).get("total_timesteps", 0) if summary.is_file() else 0
        for w in log_spaced(probe.budget_range, args.budget_points):
            pts.append(
                Point(
                    f"budget knob cw {w:.3g}, seed {seed}",
                    "vitskip: budget knob (one model)",
                    True,
                    {"kind": "dynamic", "file": str(path), "compute_weight": w},
                    f"one model (`train/ppo.py --budget-range {probe.budget_range[0]:g} {probe.budget_range[1]:g}`, "
                    f"{path.parent.name}), set_compute_weight({w:.3g})",
                    f"{steps // 1000}k PPO steps",
                )
            )
    return pts


def _rule_label(rule: dict[str, Any]) -> str:
    from vitskip_env.deploy import ExitRule

    return ExitRule(**rule).label()


def joint_points(args: Any, run: Path, bb: str) -> list[Point]:
    """The contenders one ``train/joint.py`` run holds (its seed in every name)."""
    run_args = yaml.safe_load((run / "args.yaml").read_text(encoding="utf-8"))
    state = json.loads((run / "joint_state.json").read_text(encoding="utf-8"))
    seed, steps = run_args["seed"], run_args["backbone_steps"]
    rl_first = run_args["first_rl_steps"]
    rl_total = rl_first + run_args["rounds"] * run_args["rl_steps"]
    base, tag = run / "baselines", f"seed {seed}"
    ft = f"{steps} backbone steps"
    cmd = f"`python train/joint.py --env {run_args['env']} --seed {seed}` ({run.name})"
    pts = []
    if (base / "full.safetensors").is_file():
        pts.append(
            Point(
                f"static, fine-tuned, {tag}",
                "static, fine-tuned",
                False,
                {"kind": "backbone", "file": str(base / "full.safetensors"), "speed_key": "static"},
                f"{cmd}: the full backbone fine-tuned with the co-training recipe",
                ft,
            )
        )
    for k, entry in state.get("baseline_paths", {}).get("subsets", {}).items():
        path = base / f"subset-{k}.safetensors"
        if path.is_file():
            pts.append(
                Point(
                    f"subset {entry['mask']}, fine-tuned, {tag}",
                    "static subset, fine-tuned",
                    False,
                    {"kind": "backbone", "file": str(path), "speed_key": f"subset:{entry['mask']}"},
                    f"{cmd}: the best {k}-block subset on val, fine-tuned alone with the same recipe",
                    ft,
                )
            )
    frozen = run / "frozen_dynamic_vit.safetensors"
    pts.append(
        Point(
            f"random skip at the RL depth, {tag}",
            "random skip",
            False,
            {"kind": "random", "file": bb, "policy": str(frozen), "seed": int(seed)},
            f"each image runs as many blocks as the RL skip policy ({tag}) gives it, at random blocks",
        )
    )
    pts.append(
        Point(
            f"RL skip, frozen backbone, {tag}",
            "vitskip: RL skip",
            True,
            {"kind": "dynamic", "file": str(frozen)},
            f"{cmd}, its first phase (= `python train/ppo.py --seed {seed}`)",
            f"{rl_first // 1000}k PPO steps",
        )
    )
    cotrained = run / "dynamic_vit.safetensors"
    budget = f"{rl_total // 1000}k PPO + {steps} backbone steps"
    pts.append(
        Point(
            f"RL skip, co-trained, {tag}",
            "vitskip: RL skip, co-trained",
            True,
            {"kind": "dynamic", "file": str(cotrained)},
            cmd,
            budget,
        )
    )
    return pts + merge_points(args, cotrained, f"co-trained + ToMe {{}}, {tag}", cmd, budget)
    return pts


def merge_points(args: Any, path: Path, name: str, source: str, training: str) -> list[Point]:
    """The skip-only ``DynamicViT`` at ``path`` with each ``--merge`` schedule (``name`` gets the schedule's text)."""
    depth = int(json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["backbone"]["depth"])
    pts = []
    for text in args.merge:
        schedule = parse_merge(text, depth)
        pts.append(
            Point(
                name.format(text),
                "vitskip: skip + ToMe",
                True,
                {"kind": "dynamic", "file": str(path), "r": schedule},
                f"{source}, then ToMe merges {schedule} per block in the blocks each image runs (training-free)",
                training,
            )
        )
    return pts


def arch_points(args: Any, flops_of: Any) -> list[Point]:
    """Speed-only contenders of a random-weight ``--arch`` model at matched FLOPs (see the module docstring).

    For each ``--fractions`` target the random-weight ``DynamicViT`` is calibrated as close as its
    decisions allow (whole blocks flip together); its *counted* FLOPs then set the match: the
    static subset with the closest FLOPs and the ToMe ``r`` with the closest FLOPs.
    """
    from vitskip_env.model import SkippableViT

    torch.manual_seed(args.seed)
    vit = SkippableViT(args.arch, **({"img_size": args.img_size} if args.img_size else {}))
    size, depth = vit.img_size, vit.depth
    geo = {"arch": args.arch, "img_size": size, "seed": args.seed}
    static = Point(
        "static backbone",
        "static",
        False,
        {"kind": "backbone", **geo, "speed_key": "static"},
        f"random-weight {args.arch} at {size}x{size}",
    )
    pts = [static]
    full = flops_of(static)
    subset_share = {k: flops_of(_first(k, depth, geo)) / full for k in range(1, depth)}
    for f in args.fractions:
        dyn = Point(
            f"DynamicViT, target {f:.2f}",
            "vitskip: RL skip",
            True,
            {"kind": "dynamic", **geo, "fraction": f},
            f"random-weight default-size policy calibrated on the test images towards {f:.2f} of the blocks",
        )
        share = flops_of(dyn) / full
        dyn.name = f"DynamicViT, {share:.2f} FLOPs"
        k = min(subset_share, key=lambda k: abs(subset_share[k] - share))
        sub = _first(k, depth, geo)
        sub.name = f"first {k} blocks, {subset_share[k]:.2f} FLOPs"
        r = tome_r_for(vit, share, full, flops_of, geo)
        tome_share = flops_of(Point("probe", "probe", False, {"kind": "backbone", **geo, "r": r}, "")) / full
        pts += [
            sub,
            Point(
                f"random skip at the {share:.2f}-FLOPs policy's depth",
                "random skip",
                False,
                {"kind": "random", **geo, "fraction": f},
                "random blocks at the random-weight policy's per-image depth",
            ),
            dyn,
            Point(
                f"ToMe r={r}, {tome_share:.2f} FLOPs",
                "token merging (ToMe)",
                False,
                {"kind": "backbone", **geo, "r": r},
                f"ToMe, {r} tokens per block: the r whose counted FLOPs come closest to the DynamicViT's",
            ),
        ]
    f = max(args.fractions)
    r = max(1, tome_r_for(vit, 0.8, full, flops_of, geo))
    pts.append(
        Point(
            f"DynamicViT (target {f:.2f}) + ToMe r={r}",
            "vitskip: skip + ToMe",
            True,
            {"kind": "dynamic", **geo, "fraction": f, "r": r},
            f"the target-{f:.2f} DynamicViT with ToMe r={r} in its blocks",
        )
    )
    return pts


def _first(k: int, depth: int, geo: dict[str, Any]) -> Point:
    keep = "1" * k + "0" * (depth - k)
    return Point(
        f"first {k} blocks",
        "static subset",
        False,
        {"kind": "backbone", **geo, "keep": keep},
        f"a {k}-block ViT (speed only: which blocks does not change the speed)",
    )


def tome_r_for(vit: Any, fraction: float, full: float, flops_of: Any, geo: dict[str, Any]) -> int:
    """The per-block ``r`` whose counted FLOPs are closest to ``fraction`` of the static model's."""

    def share(r: int) -> float:
        return flops_of(Point("probe", "probe", False, {"kind": "backbone", **geo, "r": r}, "")) / full

    lo, hi = 1, (vit.num_tokens - vit.num_prefix_tokens) // 2  # FLOPs fall as r grows: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if share(mid) > fraction else (lo, mid)
    return min((lo, hi), key=lambda r: abs(share(r) - fraction))
