"""DynamicViT vs the static ViT: accuracy, wall-clock throughput and peak working memory, side by side.

    python train/benchmark.py                                   # newest run under runs/ (offline default: shapes)
    python train/benchmark.py --run runs/<run> --batch-sizes 1 64 256
    python train/benchmark.py --model dyn.safetensors --dataset cifar100 --device cuda --dtype bf16
    python train/benchmark.py --arch vit_tiny_patch16_224 --img-size 224   # speed only, random weights

Contenders (``vitskip_env.measure.contenders``): ``static`` (all blocks), ``dynamic`` (the DynamicViT, its
policy's cost included), ``random`` (each image executes as many blocks as the policy gave it, at
random blocks), ``static_subset`` (the best fixed subset with the policy's mean depth rounded, found
exhaustively on the ``val`` split by ``agents.nsga2.evaluate_subsets``, or given with ``--subset``).
Top-1 on the whole test split; speed on real test images at each batch size, interleaved call by
call in this one process (medians); peak working memory in a fresh process per configuration.
Writes ``benchmark.csv`` / ``.parquet`` / ``.png`` / ``.svg`` / ``.md`` into ``--out``.

``--exits FILE`` benchmarks an early-exit model (``train/exits.py``) instead: its four threshold rules
with LGViT heads and with linear exits, at LGViT's defaults and calibrated on ``val`` to an accuracy,
against the static backbone and (with ``--run``) a skip-only DynamicViT (``train/benchmark_exits.py``).

``--arch`` measures speed only, on any timm ViT geometry: a random-weight backbone with a
random-weight policy of the agents' default network, calibrated to execute ``--execute-fraction``
of the blocks (``vitskip_env.measure.synthetic``), on the test images resized to ``--img-size``. No
top-1, no static subset, no memory probe.
"""

from __future__ import annotations

import os
import sys

#: glibc malloc settings the benchmark process starts with (see docs/architecture.md, "Principles"):
#: without them large activations are mapped and unmapped every forward (page faults cost 25-35%).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
if __name__ == "__main__" and "--no-malloc-tuning" not in sys.argv and not all(k in os.environ for k in MALLOC_ENV):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})  # before torch is imported

import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import common
import pandas as pd
import torch
import tyro

from vitskip_env.files import atomic_path, atomic_write_text


@dataclass
class Args:
    run: str | None = None
    """run directory holding dynamic_vit.safetensors (default: the newest under runs/)"""
    model: str | None = None
    """a DynamicViT file instead of --run"""
    dataset: str | None = None
    """dataset (default: the one of the env the model was trained in)"""
    data_root: str | None = None
    """folder of real datasets"""
    batch_sizes: tuple[int, ...] = (1, 8, 64, 256, 1024)
    """batch sizes to time"""
    rounds: int = 7
    """timed rounds per batch size (medians are reported)"""
    warmup: int = 1
    """untimed rounds first"""
    images_per_round: int = 2048
    """real test images per round and contender (at most 8 batches; at least one)"""
    device: str = "auto"
    """cpu, cuda or auto"""
    dtype: str = "fp32"
    """fp32 or bf16 (the backbone; the policy decides in fp32)"""
    threads: int | None = None
    """CPU threads (default: all cores)"""
    subset: str = "auto"
    """static_subset contender: auto (best subset of the policy's depth on val), none, or kept blocks as 0/1"""
    val_images: int = 2000
    """val images for the best-subset search"""
    top1_images: int | None = None
    """test images for top-1 (default: the whole split)"""
    memory: bool = True
    """measure peak working memory (one fresh process per contender and batch size)"""
    seed: int = 0
    """seed of the random-skip masks"""
    out: str | None = None
    """output folder (default: RUN/benchmark, or runs/benchmark__<time> with --model)"""
    arch: str | None = None
    """speed only: a random-weight DynamicViT of this preset / timm ViT (e.g. vit_tiny_patch16_224) instead of a run"""
    img_size: int | None = None
    """--arch: input size (default: the architecture's; test images are resized to it)"""
    execute_fraction: float = 0.33
    """--arch: mean fraction of blocks the calibrated random policy executes"""
    exits: str | None = None
    """an EarlyExitViT file (train/exits.py): time its threshold rules against the static backbone (and --run's
    skip-only DynamicViT when given); writes exits.md"""
    exit_runs: tuple[str, ...] = ()
    """--exits: runs of train/ppo.py --actions skip_exit on that exit file's backbone (RL skip+exit contenders)"""
    match_top1: float | None = None
    """--exits: top-1 the matched thresholds must reach on val (default: the first --exit-runs model's test top-1,
    else --run's, else static - 0.5)"""
    malloc_tuning: bool = True
    """restart with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set (unless already set)"""


def best_subset(dyn, ds, n_images: int, n_blocks: int | None = None) -> tuple[torch.Tensor, float]:
    """The fixed subset with the best top-1 on ``ds`` among all subsets of ``n_blocks`` blocks (exhaustive).

    ``n_blocks`` defaults to the policy's mean executed blocks on the same images, rounded. All
    ``C(depth, n_blocks)`` subsets are scored in one batched pass (:func:`agents.nsga2.layers.evaluate_subsets`).
    """
    from agents.nsga2.layers import evaluate_subsets
    from vitskip_env.measure import score

    n = min(n_images, len(ds))
    if n_blocks is None:
        n_blocks = max(1, round(score(dyn, ds, n_images=n).executed_blocks))
    combos = list(combinations(range(dyn.depth), n_blocks))
    masks = torch.zeros(len(combos), dyn.depth, dtype=torch.bool)
    for row, kept in enumerate(combos):
        masks[row, list(kept)] = True
    scores = evaluate_subsets(dyn.backbone, masks, ds.images[:n], ds.labels[:n], dataset=ds)
    best = int(scores["top1"].argmax())
    return masks[best].to(ds.device), float(scores["top1"][best])


def resolve_subset(args: Args, dyn, dataset: str, device: torch.device) -> torch.Tensor | None:
    """The ``static_subset`` contender's kept blocks from ``--subset`` (``None`` for ``none``)."""
    from agents.nsga2 import mask_to_str, str_to_mask
    from vitskip_env import make_dataset

    if args.subset == "none":
        return None
    if args.subset != "auto":
        subset = torch.from_numpy(str_to_mask(args.subset)).to(device)
        if subset.numel() != dyn.depth:
            raise ValueError(f"--subset has {subset.numel()} bits but the model has {dyn.depth} blocks")
        return subset
    val = make_dataset(dataset, "val", args.data_root, False, device)
    subset, val_top1 = best_subset(dyn, val, args.val_images)
    print(f"best static subset of {int(subset.sum())} blocks on val ({min(args.val_images, len(val))} images): "
          f"{mask_to_str(subset.cpu().numpy())} ({val_top1:.2f}%)")  # fmt: skip
    return subset


def main(args: Args) -> Path:
    """Measure and write the tables and plot; returns the output folder."""
    import gymnasium as gym

    from analysis.plots import plot_throughput, save_figure
    from vitskip_env import DynamicViT, make_dataset
    from vitskip_env.measure import accuracy_table, measure_speed, peak_memory_mib

    common.set_threads(args.threads)
    device = common.resolve_device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype)
    if dtype is None:
        raise ValueError(f"--dtype must be fp32 or bf16, got {args.dtype!r}")
    if args.arch:
        return main_synthetic(args, device, dtype)
    if args.exits:
        from benchmark_exits import main_exits

        return main_exits(args, device, dtype)
    if args.model:
        model_file, run_dir = Path(args.model), None
    else:
        run_dir = Path(args.run) if args.run else common.newest_run("runs")
        if run_dir is None:
            raise FileNotFoundError(
                "no run with a dynamic_vit.safetensors under 'runs'; train one with `python train/ppo.py` or pass --model FILE"
            )
        model_file = run_dir / "dynamic_vit.safetensors"
    dyn = DynamicViT.load(model_file, device=device)
    dataset = args.dataset or gym.spec(dyn.meta.get("env", "ViTSkip-Shapes-v0")).kwargs.get("dataset", "shapes")
    test = make_dataset(dataset, "test", args.data_root, False, device)
    out = (
        Path(args.out)
        if args.out
        else (run_dir / "benchmark" if run_dir else Path("runs") / f"benchmark__{time.strftime('%Y%m%d-%H%M%S')}")
    )
    print(f"benchmark of {model_file} on {dataset} test ({len(test)} images), {device} {args.dtype}, "
          f"{torch.get_num_threads()} threads -> {out}")  # fmt: skip

    subset = resolve_subset(args, dyn, dataset, device)  # chosen in float32, on val, before the cast
    dyn.backbone.to(dtype)
    acc = accuracy_table(dyn, test, subset=subset, limit=args.top1_images, seed=args.seed, dtype=dtype)
    for name, a in acc.items():
        print(f"  {name:14s} top-1 {a['top1']:6.2f}%  blocks {a['executed_blocks']:.2f}")

    rows = []
    for bs in args.batch_sizes:
        for row in measure_speed(dyn, test, bs, subset=subset, images_per_round=args.images_per_round, rounds=args.rounds,
                                 warmup=args.warmup, seed=args.seed, dtype=dtype):  # fmt: skip
            row.update(top1=acc[row["model"]]["top1"], top1_blocks=acc[row["model"]]["executed_blocks"])
            if args.memory:
                row["peak_mem_mib"] = peak_memory_mib(
                    model_file, row["model"], bs, dataset=dataset, data_root=args.data_root, device=str(device),
                    dtype=args.dtype, threads=args.threads, seed=args.seed,
                    subset=None if subset is None else subset.tolist(),
                )  # fmt: skip
            rows.append(row)
            print(f"  batch {bs:5d} {row['model']:14s} {row['images_per_s']:10.0f} img/s  x{row['speedup']:.2f}  "
                  f"efficiency {row['efficiency']:.2f} (bound {row['bound_efficiency']:.2f})"
                  + (f"  peak {row['peak_mem_mib']:.1f} MiB" if args.memory else ""))  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.insert(0, "device", str(device.type))
    frame.insert(1, "dtype", args.dtype)
    frame.insert(2, "threads", torch.get_num_threads())
    frame["subset"] = None if subset is None else "".join("1" if b else "0" for b in subset.tolist())
    write_outputs(frame, out, describe(args, model_file, dataset, len(test), acc))
    save_figure(plot_throughput(frame), out / "benchmark")
    print((out / "benchmark.md").read_text(encoding="utf-8"))
    return out


def main_synthetic(args: Args, device: torch.device, dtype: torch.dtype) -> Path:
    """``--arch``: speed of a random-weight DynamicViT of that geometry (see the module docstring)."""
    import torch.nn.functional as F

    from analysis.plots import plot_throughput, save_figure
    from vitskip_env import SkippableViT, make_dataset
    from vitskip_env.data import ImageDataset
    from vitskip_env.measure import measure_speed, synthetic_dynamic_vit

    source = make_dataset(args.dataset or "shapes", "test", args.data_root, False, device)
    n = min(len(source), max(256, max(args.batch_sizes)))
    images = source.images[:n]
    overrides = {} if args.img_size is None else {"img_size": args.img_size}
    size = SkippableViT(args.arch, **overrides).img_size
    if size != images.shape[-1]:
        images = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
        images = images.to(torch.uint8)
    ds = ImageDataset(source.name, "test", images, source.labels[:n], source.classes, source.mean, source.std)
    dyn = synthetic_dynamic_vit(args.arch, ds.normalize(ds.images[:32]), execute_fraction=args.execute_fraction,
                                seed=args.seed, **overrides)  # fmt: skip
    dyn.backbone.to(dtype)
    out = Path(args.out) if args.out else Path("runs") / f"benchmark__{args.arch}__{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"speed of a random-weight DynamicViT ({args.arch}, {size}x{size}, {dyn.depth} blocks, target execute fraction "
          f"{args.execute_fraction}) on {n} resized {source.name} test images, {device} {args.dtype}, "
          f"{torch.get_num_threads()} threads -> {out}")  # fmt: skip
    rows = []
    for bs in args.batch_sizes:
        for row in measure_speed(dyn, ds, bs, images_per_round=args.images_per_round, rounds=args.rounds,
                                 warmup=args.warmup, seed=args.seed, dtype=dtype):  # fmt: skip
            rows.append(row)
            print(f"  batch {bs:5d} {row['model']:8s} {row['images_per_s']:10.1f} img/s  x{row['speedup']:.2f}  "
                  f"blocks {row['executed_blocks']:.2f}  efficiency {row['efficiency']:.2f} "
                  f"(bound {row['bound_efficiency']:.2f})")  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.insert(0, "device", str(device.type))
    frame.insert(1, "dtype", args.dtype)
    frame.insert(2, "threads", torch.get_num_threads())
    frame["subset"] = None
    frame["arch"] = args.arch
    model = f"random-weight {args.arch} at {size}x{size} + random-weight default policy (speed only)"
    write_outputs(frame, out, describe(args, Path(model), f"resized {source.name}", n, {}))
    save_figure(plot_throughput(frame), out / "benchmark")
    print((out / "benchmark.md").read_text(encoding="utf-8"))
    return out


def describe(args: Args, model_file: Path, dataset: str, n_test: int, acc: dict) -> dict:
    """The facts the markdown table needs besides the rows."""
    return {
        "command": "python " + " ".join(["train/benchmark.py", *sys.argv[1:]]),
        "model": str(model_file), "dataset": dataset, "n_test": n_test, "acc": acc,
        "malloc": {k: os.environ.get(k) for k in MALLOC_ENV},
    }  # fmt: skip


def write_outputs(frame: pd.DataFrame, out: Path, facts: dict) -> None:
    """``benchmark.csv``, ``.parquet`` and ``.md`` in ``out`` (atomically)."""
    with atomic_path(out / "benchmark.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(out / "benchmark.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    atomic_write_text(out / "benchmark.md", markdown(frame, facts))


def markdown(frame: pd.DataFrame, facts: dict) -> str:
    """The README-ready tables: accuracy, then one row per batch size with every contender's speed."""
    first = frame.iloc[0]
    acc = facts["acc"]
    lines = [
        f"# DynamicViT benchmark: {facts['dataset']}, {first['device']} {first['dtype']}, {first['threads']} threads",
        "",
        (
            f"Model `{facts['model']}`; top-1 on the {facts['n_test']:,}-image test split."
            if acc
            else f"Model `{facts['model']}`, timed on {facts['n_test']:,} test images; random weights, so no top-1."
        )
        + f" Regenerate with `{facts['command']}`.",
        "",
    ]
    if acc:
        lines += ["| contender | top-1 (%) | executed blocks |", "|---|---:|---:|"]
    for name, a in acc.items():
        label = name + (f" `{first['subset']}`" if name == "static_subset" and first["subset"] else "")
        lines.append(f"| {label} | {a['top1']:.2f} | {a['executed_blocks']:.2f} |")
    has_mem = "peak_mem_mib" in frame.columns
    lines += [
        "",
        "| batch | static img/s | dynamic img/s | speed-up | ideal | efficiency | bound | bound eff. | random-skip speed-up"
        " | static subset speed-up |" + (" peak MiB static / dynamic |" if has_mem else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_mem else ""),
    ]
    for bs, g in frame.groupby("batch", sort=True):
        r = {row["model"]: row for _, row in g.iterrows()}
        s, d = r["static"], r["dynamic"]
        sub = f"{r['static_subset']['speedup']:.2f}x" if "static_subset" in r else "-"
        mem = f" {s['peak_mem_mib']:.1f} / {d['peak_mem_mib']:.1f} |" if has_mem else ""
        lines.append(
            f"| {bs} | {s['images_per_s']:,.0f} | {d['images_per_s']:,.0f} | {d['speedup']:.2f}x "
            f"| {d['ideal_speedup']:.2f}x | {d['efficiency']:.2f} | {d['bound_speedup']:.2f}x | {d['bound_efficiency']:.2f} "
            f"| {r['random']['speedup']:.2f}x | {sub} |{mem}"
        )
    fixed = frame.loc[frame["model"] == "static"].set_index("batch")["fixed_share"]
    malloc = ", ".join(f"{k}={v}" for k, v in facts["malloc"].items() if v) or "glibc defaults"
    lines += [
        "",
        "Speed-ups are medians of per-round ratios to the static backbone, all contenders interleaved call by call "
        "in one process on the same real test images. *ideal* = depth / executed blocks; *bound* keeps the "
        "unskippable patch embedding and head (their share of the static time: "
        + ", ".join(f"{f:.0%} at {b}" for b, f in fixed.items())
        + "); *efficiency* = speed-up / ideal, *bound eff.* = speed-up / bound. "
        + ("Memory: peak working memory of one forward in a fresh process per configuration. " if has_mem else "")
        + f"malloc: {malloc}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main(tyro.cli(Args))
