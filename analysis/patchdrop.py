"""Patch dropping during training: time-to-accuracy of every contender, the goals, the table and the plot.

Inputs are the frames ``train/patchdrop.py`` writes: ``runs`` (one row per contender and seed: the
run's figures) and ``steps`` (one row per contender, seed and step: training clock ``used``, the
keep ratio of the step, validation top-1 on the run's ``val_images``). Pure pandas and matplotlib.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

#: Display order and labels of the contenders.
CONTENDERS: dict[str, str] = {
    "full": "full patches",
    "learned": "learned schedule (PPO)",
    "random": "random PatchDropout at the learned mean keep",
    "anneal": "fixed schedule 0.5 -> 1.0",
    "agentvit": "AgentViT (faithful)",
}


def time_to(curve: pd.DataFrame, target: float) -> float:
    """First training-clock time at which ``val_top1`` reaches ``target`` (NaN if never)."""
    hit = curve[curve["val_top1"] >= target - 1e-12]
    return float(hit["used"].iloc[0]) if len(hit) else math.nan


def per_run(runs: pd.DataFrame, steps: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """``runs`` plus, per seed, the time each contender needs to reach the full-patch run's final curve
    top-1 minus ``tolerance`` (seconds and share of the full-patch run's wall-clock), and its seconds per
    epoch over the full-patch run's (``epoch_time_vs_full``: measured in the same process, one after the other)."""
    out = runs.copy()
    out["time_to_full"] = math.nan
    out["time_to_full_share"] = math.nan
    full_epoch = out[out["contender"] == "full"].set_index("seed")["seconds_per_epoch"]
    out["epoch_time_vs_full"] = out["seconds_per_epoch"] / out["seed"].map(full_epoch)
    for seed, group in steps.groupby("seed"):
        full = group[group["contender"] == "full"].sort_values("used")
        if full.empty:
            continue
        target = float(full["val_top1"].dropna().iloc[-1]) - tolerance
        full_seconds = float(full["used"].iloc[-1])
        for contender, curve in group.groupby("contender"):
            t = time_to(curve.dropna(subset=["val_top1"]).sort_values("used"), target)
            mask = (out["seed"] == seed) & (out["contender"] == contender)
            out.loc[mask, "time_to_full"] = t
            out.loc[mask, "time_to_full_share"] = t / full_seconds
    return out


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (half the range over seeds) of every figure, one row per contender."""
    cols = [c for c in frame.columns if c not in ("contender", "seed") and pd.api.types.is_numeric_dtype(frame[c])]
    grouped = frame.groupby("contender")[cols]
    mean, spread = grouped.mean(), (grouped.max() - grouped.min()) / 2
    out = mean.join(spread.add_suffix("_spread"))
    out["seeds"] = frame.groupby("contender")["seed"].nunique()
    order = [c for c in CONTENDERS if c in out.index] + [c for c in out.index if c not in CONTENDERS]
    return out.loc[order]


def goals(frame: pd.DataFrame, share: float = 0.7) -> dict[str, Any]:
    """The issue's goals, per seed and on the mean: time-to-full-accuracy share and learned vs random."""
    facts: dict[str, Any] = {"share_goal": share}
    learned = frame[frame["contender"] == "learned"].set_index("seed")
    random = frame[frame["contender"] == "random"].set_index("seed")
    if learned.empty:
        return facts
    shares = learned["time_to_full_share"]
    facts["learned_time_share"] = {int(s): _plain(v) for s, v in shares.items()}
    facts["reaches_full_within_share"] = bool(shares.notna().all() and (shares <= share).all())
    if not random.empty:
        common = learned.index.intersection(random.index)
        diff = learned.loc[common, "val_top1"] - random.loc[common, "val_top1"]
        facts["val_top1_minus_random"] = {int(s): _plain(v) for s, v in diff.items()}
        facts["beats_random_top1"] = bool(len(diff) and (diff > 0).all())
        lt, rt = learned.loc[common, "time_to_full"], random.loc[common, "time_to_full"]
        facts["beats_random_time"] = bool(len(common) and (lt.notna() & (rt.isna() | (lt < rt))).all())
    return facts


def _plain(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _cell(mean: float, spread: float, scale: float = 1.0, spec: str = ".1f") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "never"
    return f"{mean * scale:{spec}} ± {spread * scale:{spec}}"


def _per_seed(frame: pd.DataFrame, name: str, column: str) -> str:
    values = frame[frame["contender"] == name].sort_values("seed")[column]
    return ", ".join("never" if pd.isna(v) else f"{v:.2f}" for v in values)


def markdown(frame: pd.DataFrame, facts: dict[str, Any]) -> str:
    """The README table: every contender's mean ± spread over seeds (time shares per seed), then the goals."""
    t = table(frame)
    lines = [
        "| contender | seeds | mean keep | val top-1 % | test top-1 % (all / kept patches) | time to full-patch top-1 "
        "(share of its wall-clock, per seed) | s / epoch vs full | train peak MiB | inference speed-up at final keep |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in t.iterrows():
        lines.append(
            f"| {CONTENDERS.get(name, name)} | {int(r['seeds'])} | {r['mean_keep']:.3f} | "
            f"{_cell(r['val_top1'], r['val_top1_spread'], 100)} | "
            f"{_cell(r['test_top1'], r['test_top1_spread'], 100)} / "
            f"{_cell(r['test_top1_kept'], r['test_top1_kept_spread'], 100)} | "
            f"{_per_seed(frame, name, 'time_to_full_share')} | "
            f"{r['epoch_time_vs_full']:.2f} | {r['train_peak_mib']:.0f} | "
            f"{r['inference_speedup']:.2f}x (keep {r['final_keep']:.2f}) |"
        )
    lines.append("")
    if "learned_time_share" in facts:
        shares = ", ".join(f"seed {s}: {'never' if v is None else f'{v:.2f}'}" for s, v in facts["learned_time_share"].items())
        ok = "met" if facts["reaches_full_within_share"] else "missed"
        lines.append(
            f"- Learned schedule reaches the full-patch top-1 (within 1 pt) in at most {facts['share_goal']} of its "
            f"wall-clock: **{ok}** ({shares})."
        )
    if "beats_random_top1" in facts:
        diffs = ", ".join(f"seed {s}: {v * 100:+.1f} pt" for s, v in facts["val_top1_minus_random"].items())
        ok = "met" if facts["beats_random_top1"] or facts["beats_random_time"] else "missed"
        lines.append(
            f"- Learned beats random PatchDropout at the same mean keep ratio (higher val top-1 at equal budget, "
            f"or sooner to the full-patch top-1): **{ok}** (val top-1 learned - random: {diffs}; sooner on every seed: "
            f"{facts['beats_random_time']})."
        )
    return "\n".join(lines) + "\n"


def plot_curves(steps: pd.DataFrame, title: str) -> Figure:
    """Validation top-1 vs training wall-clock: per contender the mean over seeds (bold; each seed's
    curve interpolated on a common time grid) and every seed's own curve (thin)."""
    fig = Figure(figsize=(7.5, 4.5), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    colours = dict(zip(CONTENDERS, ("black", "tab:red", "tab:blue", "tab:green", "tab:purple"), strict=True))
    for name in [c for c in CONTENDERS if c in set(steps["contender"])]:
        curves = [
            c.dropna(subset=["val_top1"]).sort_values("used") for _, c in steps[steps["contender"] == name].groupby("seed")
        ]
        for curve in curves:
            ax.plot(curve["used"], 100 * curve["val_top1"], color=colours[name], alpha=0.25, lw=0.8)
        grid = np.linspace(0.0, min(float(c["used"].iloc[-1]) for c in curves), 60)
        mean = np.mean([np.interp(grid, c["used"], c["val_top1"]) for c in curves], axis=0)
        ax.plot(grid, 100 * mean, color=colours[name], lw=2.0, label=f"{CONTENDERS[name]} ({len(curves)} seeds)")
    ax.set_xlabel("training wall-clock (s, measured; validation off the clock)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", title="bold: mean over seeds; thin: each seed", title_fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["CONTENDERS", "goals", "markdown", "per_run", "plot_curves", "table", "time_to"]
