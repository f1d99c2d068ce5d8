"""``python -m analysis.budget --conditioned RUN... --separate RUN... --out DIR``: one budget-conditioned policy
against policies trained separately, one per compute weight.

A budget-conditioned run (``train/ppo.py --budget-range LO HI``) writes its accuracy-vs-blocks curve in
``summary.json`` (``budget_curve``: test top-1 and executed blocks at each calibrated compute weight).
Each separately trained run (``train/ppo.py --compute-weight W``) is one point. The comparison is at
**equal executed blocks**: the conditioned curve's top-1 interpolated (linearly in blocks) at the
separate policy's executed blocks, and the gap ``conditioned - separate``; a separate point outside
the curve's span of blocks is reported as such, not extrapolated. Seeds are matched when both sides
have them; the table keeps every pair, and the summary gives the mean and spread per compute weight.

Pure pandas / matplotlib (reads ``summary.json`` files only).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vitskip_env.files import atomic_path, atomic_write_text

from .cli import print_written
from .readers import read_args, read_summary


def curve_frame(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The ``budget_curve`` of a budget-conditioned run: ``compute_weight, top1, executed_blocks, seed, run``.

    Raises:
        ValueError: The run is not budget-conditioned (no ``budget_curve`` in its summary).
    """
    s = read_summary(run_dir)
    if not s.get("budget_curve"):
        raise ValueError(f"{run_dir}: no budget_curve in summary.json; pass runs of train/ppo.py --budget-range LO HI")
    frame = pd.DataFrame(s["budget_curve"])
    return frame.assign(seed=s["seed"], run=Path(run_dir).name, depth=s["depth"])


def separate_frame(run_dirs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per separately trained run: ``compute_weight, top1, executed_blocks, seed, run``."""
    rows = []
    for d in run_dirs:
        s = read_summary(d)
        if s.get("budget_curve"):
            raise ValueError(f"{d} is budget-conditioned; pass it with --conditioned")
        weight = read_args(d).get("compute_weight")
        rows.append({"compute_weight": weight, "top1": s["top1_dynamic"], "executed_blocks": s["executed_blocks"],
                     "seed": s["seed"], "run": Path(d).name, "depth": s["depth"]})  # fmt: skip
    return pd.DataFrame(rows)


def at_blocks(curve: pd.DataFrame, blocks: float) -> float | None:
    """Top-1 of a curve at ``blocks`` executed blocks (linear between its points), ``None`` outside its span."""
    pts = curve.groupby("executed_blocks", as_index=False)["top1"].max().sort_values("executed_blocks")
    xs, ys = pts["executed_blocks"].to_numpy(), pts["top1"].to_numpy()
    if len(xs) == 0 or not xs[0] <= blocks <= xs[-1]:
        return None
    return float(np.interp(blocks, xs, ys))


def compare(curves: pd.DataFrame, separate: pd.DataFrame) -> pd.DataFrame:
    """Every (separate run, conditioned seed) pair at the separate run's executed blocks."""
    rows = []
    for _, sep in separate.iterrows():
        for seed, curve in curves.groupby("seed"):
            top1 = at_blocks(curve, float(sep["executed_blocks"]))
            rows.append({
                "compute_weight": sep["compute_weight"], "separate_seed": sep["seed"], "conditioned_seed": seed,
                "executed_blocks": sep["executed_blocks"], "executed_frac": sep["executed_blocks"] / sep["depth"],
                "separate_top1": sep["top1"], "conditioned_top1": top1,
                "gap": None if top1 is None else top1 - float(sep["top1"]), "same_seed": seed == sep["seed"],
            })  # fmt: skip
    return pd.DataFrame(rows)


def summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per compute weight: mean executed fraction, mean / min / max gap over the seed-matched pairs (all pairs if none)."""
    use = pairs[pairs["same_seed"]] if pairs["same_seed"].any() else pairs
    use = use.dropna(subset=["gap"])
    return (
        use.groupby("compute_weight")
        .agg(
            executed_frac=("executed_frac", "mean"),
            separate_top1=("separate_top1", "mean"),
            conditioned_top1=("conditioned_top1", "mean"),
            gap_mean=("gap", "mean"),
            gap_min=("gap", "min"),
            gap_max=("gap", "max"),
            pairs=("gap", "size"),
        )
        .reset_index()
    )


def write(conditioned: Sequence[str | os.PathLike], separate: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write ``budget.md``, ``budget_pairs.csv`` and ``budget.png`` to ``out``; returns the markdown's path."""
    from . import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = pd.concat([curve_frame(d) for d in conditioned], ignore_index=True)
    sep = separate_frame(separate)
    pairs = compare(curves, sep)
    table = summary(pairs)
    with atomic_path(out / "budget_pairs.csv") as tmp:
        pairs.to_csv(tmp, index=False)
    fig = plots.plot_pareto(
        {f"budget-conditioned, seed {seed}": c for seed, c in curves.groupby("seed")},
        sep.assign(name=[f"cw {w:g} s{s}" for w, s in zip(sep["compute_weight"], sep["seed"], strict=True)]),
    )
    fig.axes[0].set_title("One budget-conditioned policy vs one policy per compute weight")
    plots.save_figure(fig, out / "budget", formats=("png",))
    cmd = "python -m analysis.budget --conditioned " + " ".join(Path(d).name for d in conditioned)
    cmd += " --separate " + " ".join(Path(d).name for d in separate)
    lines = [
        "# One budget-conditioned policy vs separately trained policies", "",
        f"`{cmd}` (run directories). Test split. Gap = conditioned top-1 (its curve interpolated at the separate "
        "policy's executed blocks) minus the separate policy's top-1; mean, min and max over the seed-matched pairs.", "",
        "| compute weight | executed fraction | separate top-1 | conditioned top-1 | gap mean (pt) | gap min | gap max "
        "| pairs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for _, r in table.iterrows():
        lines.append(f"| {r['compute_weight']:g} | {r['executed_frac']:.3f} | {r['separate_top1']:.2f} | "
                     f"{r['conditioned_top1']:.2f} | {r['gap_mean']:+.2f} | {r['gap_min']:+.2f} | {r['gap_max']:+.2f} | "
                     f"{int(r['pairs'])} |")  # fmt: skip
    outside = pairs[pairs["gap"].isna()]
    if len(outside):
        cols = zip(outside["compute_weight"], outside["separate_seed"], outside["conditioned_seed"], strict=True)
        names = [f"cw {w:g} s{s} (vs conditioned s{c})" for w, s, c in cols]
        lines += ["", f"{len(outside)} pair(s) outside the conditioned curve's span of blocks (not extrapolated): "
                  + ", ".join(names)]  # fmt: skip
    lines += ["", "![budget](budget.png)", ""]
    path = out / "budget.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m analysis.budget", description=__doc__.split("\n")[0])
    parser.add_argument("--conditioned", nargs="+", required=True, help="budget-conditioned run directories")
    parser.add_argument("--separate", nargs="+", required=True, help="run directories, one compute weight each")
    parser.add_argument("--out", required=True, help="output folder")
    a = parser.parse_args(argv)
    return print_written(write, a.conditioned, a.separate, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
