"""One accuracy-vs-measured-speed plane: every method a practitioner would pick, timed side by side on the same images.

    python train/compare.py                                        # shapes: everything found for it
    python train/compare.py --env ViTSkip-Relations-v0 --joint-runs runs/<joint run> --exits FILE
    python train/compare.py --arch vit_small_patch16_224 --img-size 224 --batch-sizes 1 64   # speed only
    python train/compare.py --device cuda --dtype bf16 --out benchmarks/results/plane_shapes_cuda_bf16

Contenders (``train/compare_points.py``): static backbone, best static subsets (raw and fine-tuned),
random skipping at the policy's depth, token merging (ToMe) swept over ``r``, the four threshold
exit rules swept, and the vitskip models (RL skip on the frozen and the co-trained backbone, skip +
token merging, RL skip+exit, the budget-conditioned model's curve). Top-1 on the whole test split,
FLOPs counted on real test images, images/s at each batch size with every contender interleaved call
by call in this process (medians of ratios), peak working memory in a fresh process per contender.

Writes to ``--out``: ``plane.csv`` / ``.parquet`` (one row per contender and batch size), ``plane.md``
(the equal-top-1 table, the goals, every point with the setting that produced it),
``plane_b<batch>.png`` (top-1 vs images/s, the measured Pareto front ringed) and ``parts/`` (each
finished part: ``--resume`` reuses them, so an interrupted run loses at most the part in progress).
"""

from __future__ import annotations

import os
import sys

from benchmark import MALLOC_ENV

if __name__ == "__main__" and "--no-malloc-tuning" not in sys.argv and not all(k in os.environ for k in MALLOC_ENV):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})  # before torch is imported

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import pandas as pd
import torch
import tyro

from vitskip_env.files import atomic_path, atomic_write_text


@dataclass
class Args:
    env: str = "ViTSkip-Shapes-v0"
    """task: a registered ViTSkip env id (its dataset's test split is scored and timed)"""
    backbone: str | None = None
    """the static backbone (default: the demo backbone of the env's dataset, the one the runs start from)"""
    joint_runs: tuple[str, ...] = ()
    """train/joint.py runs: their fine-tuned baselines, RL policies and co-trained model join"""
    skip_runs: tuple[str, ...] = ()
    """train/ppo.py runs or DynamicViT files (skip-only policies) to add"""
    exits: str | None = None
    """early-exit file of train/exits.py (default: the one train/exits.py writes for the demo backbone, if present)"""
    exit_runs: tuple[str, ...] = ()
    """train/ppo.py --actions skip_exit runs on that exit file"""
    budget_models: tuple[str, ...] = ()
    """budget-conditioned runs or DynamicViT files (train/ppo.py --budget-range)"""
    discover: bool = True
    """also take every finished run of this env found under --runs-dir (joint, skip+exit, budget-conditioned)"""
    runs_dir: str = "runs"
    """where --discover looks"""
    tome_r: tuple[int, ...] = (1, 2, 3, 4)
    """token merging: tokens merged per block"""
    merge: tuple[str, ...] = ("1", "2", "6@0")
    """skip + merge on each co-trained model and each --skip-runs model: r (every block) or r@i,j (those blocks only)"""
    exit_sweep: bool = True
    """sweep the four threshold exit rules (needs an exit file)"""
    subsets: bool = True
    """the best static subset of every size, exhaustively on val"""
    budget_points: int = 5
    """weights of each budget-conditioned model (log-spaced over its trained range)"""
    batch_sizes: tuple[int, ...] = (1, 8, 64, 256, 1024)
    """batch sizes to time"""
    rounds: int = 5
    """timed rounds per batch size (medians)"""
    warmup: int = 1
    """untimed rounds first"""
    images_per_round: int = 2048
    """real test images per round and contender (at most 8 batches)"""
    memory: bool = True
    """peak working memory, one fresh process per contender (all batch sizes)"""
    flops_images: int = 256
    """test images run under the FLOP counter per contender"""
    top1_images: int | None = None
    """test images for top-1 (default: the whole split)"""
    val_images: int = 2000
    """val images for the best-subset search"""
    arch: str | None = None
    """speed only: random-weight models of this preset / timm ViT (e.g. vit_small_patch16_224) instead of a task"""
    img_size: int | None = None
    """--arch: input size (test images are resized to it)"""
    fractions: tuple[float, ...] = (0.5, 0.33)
    """--arch: executed fractions (and the FLOPs share token merging is matched to)"""
    device: str = "auto"
    """cpu, cuda or auto"""
    dtype: str = "fp32"
    """fp32 or bf16 (backbones; policies decide in fp32)"""
    threads: int | None = None
    """CPU threads (default: all cores)"""
    data_root: str | None = None
    """folder of real datasets"""
    seed: int = 0
    """seed of random masks and random weights"""
    out: str | None = None
    """output folder (default: runs/compare__<task or arch>__<time>)"""
    resume: bool = False
    """reuse the finished parts in --out/parts"""
    malloc_tuning: bool = True
    """restart with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set (unless already set)"""


def check(args: Args) -> None:
    """Refuse bad arguments before anything is loaded, saying what is allowed."""
    if args.dtype not in ("fp32", "bf16"):
        raise ValueError(f"--dtype must be fp32 or bf16, got {args.dtype!r}")
    if not args.batch_sizes or any(b < 1 for b in args.batch_sizes):
        raise ValueError(f"--batch-sizes must be positive integers, got {list(args.batch_sizes)}")
    if args.rounds < 1 or args.warmup < 0:
        raise ValueError(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    if any(r < 0 for r in args.tome_r):
        raise ValueError(f"--tome-r takes tokens merged per block (>= 0), got {list(args.tome_r)}")
    if args.arch and any(not 0 < f < 1 for f in args.fractions):
        raise ValueError(f"--fractions must lie in (0, 1), got {list(args.fractions)}")
    for flag, paths in (
        ("--joint-runs", args.joint_runs),
        ("--skip-runs", args.skip_runs),
        ("--exit-runs", args.exit_runs),
        ("--budget-models", args.budget_models),
    ):
        for p in paths:
            if not Path(p).exists():
                raise FileNotFoundError(f"{flag} {p}: no such run or file")


class Parts:
    """Finished parts of a comparison as JSON files in ``out/parts`` (reused with ``--resume``)."""

    def __init__(self, out: Path, resume: bool, key: dict[str, Any]) -> None:
        self.dir = out / "parts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        stamp = self.dir / "key.json"
        if resume and stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) != key:
            raise SystemExit(
                f"error: --resume {out}: those parts were made with other contenders or settings; "
                "use another --out or drop --resume"
            )
        atomic_write_text(stamp, json.dumps(key, indent=1, sort_keys=True) + "\n")

    def get(self, name: str) -> Any:
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if self.resume and path.is_file() else None

    def put(self, name: str, value: Any) -> Any:
        atomic_write_text(self.dir / f"{name}.json", json.dumps(value, indent=1) + "\n")
        return value


def main(args: Args) -> Path:
    """Build, score, count, time and write the plane; returns the output folder."""
    import compare_points as cp
    import gymnasium as gym

    from analysis.plane import plot_plane, plot_speed_vs_flops
    from analysis.plots import save_figure
    from vitskip_env import make_dataset
    from vitskip_env.measure.plane import build, count_flops, evaluate, peak_memory, resized, time_points
    from vitskip_env.model import find_backbone, load_backbone

    check(args)
    common.set_threads(args.threads)
    device = common.resolve_device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    dataset = gym.spec(args.env).kwargs["dataset"]
    source = make_dataset(dataset, "test", args.data_root, False, device)
    label = args.arch or dataset
    out = Path(args.out) if args.out else Path("runs") / f"compare__{label}__{time.strftime('%Y%m%d-%H%M%S')}"
    runners: dict[str, Any] = {}

    def runner(p: Any) -> Any:
        key = json.dumps(p.spec, sort_keys=True)
        if key not in runners:
            runners[key] = build(p.spec, device, dtype)
        return runners[key]

    if args.arch:
        test = resized(source, _arch_size(args), max(256, max(args.batch_sizes), args.flops_images))
        sample = test.normalize(test.images[: args.flops_images], dtype)
        points = cp.arch_points(args, lambda p: count_flops(build(p.spec, device, dtype), sample))
        static_name = "static backbone"
    else:
        test = source
        backbone = Path(args.backbone) if args.backbone else find_backbone("demo", dataset)
        if backbone is None:
            raise FileNotFoundError(
                f"no demo backbone for {dataset}: train one with `python train/backbone.py --dataset "
                f"{dataset}` or pass --backbone FILE"
            )
        val = make_dataset(dataset, "val", args.data_root, False, device)
        points = cp.task_points(args, dataset, backbone, load_backbone(backbone, device=device).eval(), val)
        static_name = "static backbone"
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"two contenders share a name: {sorted(n for n in names if names.count(n) > 1)}")
    parts = Parts(
        out,
        args.resume,
        {
            "points": [[p.name, p.spec] for p in points],
            "dtype": args.dtype,
            "device": device.type,
            "top1_images": args.top1_images,
        },
    )
    print(
        f"{len(points)} contenders on {label} ({len(test)} test images), {device} {args.dtype}, "
        f"{torch.get_num_threads()} threads -> {out}",
        flush=True,
    )

    accuracy = parts.get("accuracy") or {}
    n_scored = min(args.flops_images, len(test)) if args.arch else args.top1_images  # --arch: blocks run only
    for p in points:
        if p.name not in accuracy:
            accuracy[p.name] = evaluate(runner(p), test, n_images=n_scored, dtype=dtype)
            if args.arch:
                accuracy[p.name]["top1"] = float("nan")  # random weights: no accuracy to read
            else:
                print(
                    f"  top-1 {accuracy[p.name]['top1']:6.2f}  blocks {accuracy[p.name]['blocks']:.2f}  {p.name}", flush=True
                )
        parts.put("accuracy", accuracy)
    flops = parts.get("flops") or {}
    sample = test.normalize(test.images[: args.flops_images], dtype)
    for p in points:
        if p.name not in flops:
            flops[p.name] = count_flops(runner(p), sample)
    parts.put("flops", flops)

    speed_points: dict[str, Any] = {}
    for p in points:  # one per distinct computation (the first point naming it)
        speed_points.setdefault(p.speed_key, p)
    speed: dict[str, Any] = {}
    for bs in args.batch_sizes:
        done = parts.get(f"speed_b{bs}")
        if done is None:
            t0 = time.perf_counter()
            timed = {key: runner(p) for key, p in speed_points.items()}
            done = time_points(
                timed,
                test,
                bs,
                baseline=points[0].speed_key,
                rounds=args.rounds,
                warmup=args.warmup,
                images_per_round=args.images_per_round,
                dtype=dtype,
            )
            parts.put(f"speed_b{bs}", done)
            print(f"  batch {bs}: {len(timed)} computations timed in {time.perf_counter() - t0:.0f} s", flush=True)
        speed[bs] = done
    memory = parts.get("memory") or {}
    if args.memory and not memory:
        t0 = time.perf_counter()
        specs = {key: p.spec for key, p in speed_points.items()}
        found = peak_memory(specs, list(args.batch_sizes), dataset=dataset, data_root=args.data_root,
                            device=str(device), dtype=args.dtype, threads=args.threads)  # fmt: skip
        memory = parts.put("memory", {key: {str(b): v for b, v in d.items()} for key, d in found.items()})
        print(f"  peak memory of {len(specs)} computations in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for p in points:
        for bs in args.batch_sizes:
            s = speed[bs][p.speed_key]
            acc = accuracy.get(p.name, {})
            rows.append(
                {
                    "name": p.name,
                    "family": p.family,
                    "vitskip": p.vitskip,
                    "setting": p.setting,
                    "training": p.training,
                    "top1": acc.get("top1", float("nan")),
                    "blocks": acc.get("blocks", float("nan")),
                    "gflops": flops[p.name] / 1e9,
                    "batch": bs,
                    "images_per_s": s["images_per_s"],
                    "speedup": s["speedup"],
                    "ms_per_batch": s["ms_per_batch"],
                    "peak_mib": memory.get(p.speed_key, {}).get(str(bs), float("nan")),
                    "timed_as": speed_points[p.speed_key].name,
                }
            )
    frame = pd.DataFrame(rows)
    static_gflops = frame.loc[frame["name"] == static_name, "gflops"]
    frame["flops_ratio"] = float(static_gflops.iloc[0]) / frame["gflops"]  # counted FLOPs: static / this
    frame.insert(0, "device", device.type)
    frame.insert(1, "dtype", args.dtype)
    frame.insert(2, "threads", torch.get_num_threads())
    facts = describe(args, frame, label, len(test), static_name, device)
    write(frame, out, facts)
    for bs in args.batch_sizes:
        if args.arch:
            title = f"{label}: measured speed-up vs counted FLOPs, batch {bs} ({device.type} {args.dtype})"
            fig = plot_speed_vs_flops(frame, bs, title)
        else:
            fig = plot_plane(frame, bs, f"{label}: top-1 vs measured images/s, batch {bs} ({device.type} {args.dtype})")
        save_figure(fig, out / f"plane_b{bs}", formats=("png",))
    print((out / "plane.md").read_text(encoding="utf-8"))
    return out


def _arch_size(args: Args) -> int:
    from vitskip_env.model import SkippableViT

    return SkippableViT(args.arch, **({"img_size": args.img_size} if args.img_size else {})).img_size


def describe(
    args: Args, frame: pd.DataFrame, label: str, n_test: int, static_name: str, device: torch.device
) -> dict[str, Any]:
    """The facts the markdown needs besides the rows."""
    from vitskip_env.files import cache_dir

    static = frame[frame["name"] == static_name]
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    kernel = "scaled_dot_product_attention (timm fused_attn)"
    intro = (
        f"{label}: {frame['name'].nunique()} contenders, {n_test:,} test images; {hardware}, {args.dtype}, "
        f"torch {torch.__version__}; attention kernel: {kernel}. "
    )
    if args.arch:
        intro += "Random weights: speed only (no top-1); each method at matched counted FLOPs."
    return {
        "title": f"Accuracy vs measured speed: {label} ({device.type}, {args.dtype})",
        "intro": intro,
        "command": "python "
        + " ".join(["train/compare.py", *(a for a in sys.argv[1:] if a != "--resume")]).replace(
            str(cache_dir()), "$VITSKIP_HOME"
        ),
        "static_top1": float(static["top1"].iloc[0]) if len(static) else float("nan"),
        "static_name": static_name,
        "accuracy": not args.arch,
    }


def write(frame: pd.DataFrame, out: Path, facts: dict[str, Any]) -> None:
    """``plane.csv``, ``.parquet`` and ``.md`` (atomically)."""
    from analysis.plane import markdown

    with atomic_path(out / "plane.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(out / "plane.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    atomic_write_text(out / "plane.md", markdown(frame, facts))


if __name__ == "__main__":
    main(tyro.cli(Args))
