"""The accuracy-vs-measured-speed plane of ``train/compare.py``: fronts, equal-top-1 comparisons, goals, table, plots.

Input: one row per (contender, batch size) with ``name, family, vitskip, setting, training, top1,
blocks, gflops, batch, images_per_s, speedup`` (and ``peak_mib`` when memory was measured). Pure
pandas and matplotlib.

*At equal top-1* means: for a top-1 level, the fastest point of each side that reaches it; the
ratio of their images/s is how much faster the best vitskip method is than the best alternative a
practitioner would pick instead (token merging, threshold exits, static pruning, random skipping).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .stats import non_dominated_mask

#: Top-1 levels (points below the static backbone) of the equal-top-1 table.
LEVELS = (0.0, 0.25, 0.5, 1.0, 2.0)
#: The non-vitskip families the issue's dominance goal names.
RIVALS = ("token merging (ToMe)", "threshold exit (LGViT heads)")


def on_front(frame: pd.DataFrame) -> pd.Series:
    """``bool`` per row: not dominated in (top-1, images/s) by another row of the same batch size."""
    out = pd.Series(False, index=frame.index)
    for _, g in frame.groupby("batch"):
        keep = non_dominated_mask(-g[["top1", "images_per_s"]].to_numpy(dtype=float))
        out.loc[g.index] = keep
    return out


def fastest_reaching(frame: pd.DataFrame, top1: float) -> pd.Series | None:
    """The fastest row with top-1 at least ``top1`` (``None`` when none reaches it)."""
    ok = frame[frame["top1"] >= top1 - 1e-9]
    return None if ok.empty else ok.loc[ok["images_per_s"].idxmax()]


def equal_top1(frame: pd.DataFrame, batch: int, static_top1: float, levels: tuple[float, ...] = LEVELS) -> pd.DataFrame:
    """At each top-1 level (static minus ``levels``): the fastest vitskip point, the fastest other point, the ratio."""
    g = frame[frame["batch"] == batch]
    rows = []
    for drop in levels:
        level = static_top1 - drop
        ours, theirs = fastest_reaching(g[g["vitskip"]], level), fastest_reaching(g[~g["vitskip"]], level)
        rows.append(
            {
                "batch": batch,
                "max_loss": drop,
                "top1_at_least": level,
                "vitskip": None if ours is None else ours["name"],
                "vitskip_top1": np.nan if ours is None else ours["top1"],
                "vitskip_images_per_s": np.nan if ours is None else ours["images_per_s"],
                "other": None if theirs is None else theirs["name"],
                "other_family": None if theirs is None else theirs["family"],
                "other_top1": np.nan if theirs is None else theirs["top1"],
                "other_images_per_s": np.nan if theirs is None else theirs["images_per_s"],
            }
        )
    out = pd.DataFrame(rows)
    out["ratio"] = out["vitskip_images_per_s"] / out["other_images_per_s"]
    return out


def dominance(frame: pd.DataFrame, batch: int, families: tuple[str, ...] = RIVALS) -> pd.DataFrame:
    """Each point of ``families`` at ``batch`` against the fastest vitskip point with at least its top-1."""
    g = frame[frame["batch"] == batch]
    ours = g[g["vitskip"]]
    rows = []
    for _, p in g[g["family"].isin(families)].iterrows():
        best = fastest_reaching(ours, float(p["top1"]))
        rows.append(
            {
                "family": p["family"],
                "name": p["name"],
                "top1": p["top1"],
                "images_per_s": p["images_per_s"],
                "vitskip": None if best is None else best["name"],
                "vitskip_images_per_s": np.nan if best is None else best["images_per_s"],
            }
        )
    out = pd.DataFrame(rows, columns=["family", "name", "top1", "images_per_s", "vitskip", "vitskip_images_per_s"])
    out["ratio"] = out["vitskip_images_per_s"] / out["images_per_s"]
    out["dominated"] = out["ratio"] > 1.0
    return out


def goals(frame: pd.DataFrame, static_top1: float) -> dict[str, Any]:
    """The issue's three goals, measured: best vitskip speed-up within 0.5 pt at batch 256 and 1, dominance at 256."""
    out: dict[str, Any] = {}
    for batch, target in ((256, 2.0), (1, 1.8)):
        g = frame[(frame["batch"] == batch) & frame["vitskip"] & (frame["top1"] >= static_top1 - 0.5 - 1e-9)]
        if frame[frame["batch"] == batch].empty:
            continue
        best = None if g.empty else g.loc[g["speedup"].idxmax()]
        out[f"speedup_b{batch}"] = {
            "target": target,
            "best": None if best is None else best["name"],
            "speedup": np.nan if best is None else float(best["speedup"]),
            "top1": np.nan if best is None else float(best["top1"]),
            "met": best is not None and float(best["speedup"]) >= target,
        }
    if (frame["batch"] == 256).any():
        d = dominance(frame, 256)
        out["dominates_b256"] = {
            "points": len(d),
            "dominated": int(d["dominated"].sum()),
            "met": bool(len(d)) and bool(d["dominated"].all()),
        }
    return out


def _name(v: Any) -> str:
    return "none reaches it" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def _fmt(v: float, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def markdown(frame: pd.DataFrame, facts: dict[str, Any]) -> str:
    """``plane.md``: the headline (equal-top-1 table and goals per batch size), then every point."""
    static_top1 = facts["static_top1"]
    batches = sorted(frame["batch"].unique())
    lines = [f"# {facts['title']}", "", facts["intro"], "", f"Regenerate with `{facts['command']}`.", ""]
    if facts.get("accuracy", True):
        lines += [
            "## At equal top-1",
            "",
            f"The fastest vitskip point and the fastest other point reaching each top-1 level (static backbone: "
            f"{static_top1:.2f}).",
            "",
        ]
        for bs in batches:
            t = equal_top1(frame, bs, static_top1)
            lines += [
                f"Batch {bs}:",
                "",
                "| top-1 at least | vitskip (fastest) | img/s | other (fastest) | img/s | vitskip / other |",
                "|---:|---|---:|---|---:|---:|",
            ]
            for _, r in t.iterrows():
                lines.append(
                    f"| {r['top1_at_least']:.2f} | {_name(r['vitskip'])} "
                    f"| {_fmt(r['vitskip_images_per_s'], ',.0f')} | {_name(r['other'])} "
                    f"| {_fmt(r['other_images_per_s'], ',.0f')} | {_fmt(r['ratio'])}{'' if pd.isna(r['ratio']) else 'x'} |"
                )
            lines.append("")
        g = goals(frame, static_top1)
        lines += ["## Goals", ""]
        for key, label in (
            ("speedup_b256", "batch 256: >= 2.0x static at <= 0.5 pt loss"),
            ("speedup_b1", "batch 1: >= 1.8x static at <= 0.5 pt loss"),
        ):
            if key in g:
                v = g[key]
                lines.append(
                    f"- {label}: **{'met' if v['met'] else 'missed'}**, best {_name(v['best'])} at "
                    f"{_fmt(v['speedup'])}x ({_fmt(v['top1'])} top-1)."
                )
        if "dominates_b256" in g:
            v = g["dominates_b256"]
            lines.append(
                f"- batch 256: a vitskip point faster at equal or better top-1 than every token-merging and "
                f"threshold-exit point: **{'met' if v['met'] else 'missed'}** ({v['dominated']} of {v['points']})."
            )
        lines.append("")
    if facts.get("accuracy", True):
        lines += ["## The measured Pareto front", ""]
        for bs in batches:
            g = frame[frame["batch"] == bs]
            best = g[on_front(g)].sort_values("images_per_s")
            names = ", ".join(f"{r['name']} ({r['top1']:.2f}, {r['speedup']:.2f}x)" for _, r in best.iterrows())
            lines.append(f"- batch {bs}: {names}")
        if (frame["batch"] == 256).any():
            d = dominance(frame, 256)
            lines += [
                "",
                "Batch 256, each token-merging and threshold-exit point against the fastest vitskip point "
                "with at least its top-1:",
                "",
                "| rival | top-1 | img/s | fastest vitskip at >= its top-1 | img/s | ratio |",
                "|---|---:|---:|---|---:|---:|",
            ]
            for _, r in d.iterrows():
                lines.append(
                    f"| {r['name']} | {r['top1']:.2f} | {r['images_per_s']:,.0f} | {_name(r['vitskip'])} "
                    f"| {_fmt(r['vitskip_images_per_s'], ',.0f')} | {_fmt(r['ratio'])}{'' if pd.isna(r['ratio']) else 'x'} |"
                )
        lines.append("")
    lines += [
        "## Every point",
        "",
        "Speed-ups are medians of per-round ratios to the static backbone, every contender interleaved call by call "
        "in one process on the same real test images; FLOPs are counted while test images run through each model; "
        "\u2605 = on the measured Pareto front of that batch size.",
        "",
    ]
    wide = frame.pivot_table(index="name", columns="batch", values="speedup", aggfunc="first")
    front = frame.assign(front=on_front(frame)).pivot_table(index="name", columns="batch", values="front", aggfunc="first")
    head = (
        "| family | contender | training | top-1 | blocks | GFLOPs | FLOPs x | " + " | ".join(f"b{b}" for b in batches) + " |"
    )
    lines += [head, "|---|---|---|---:|---:|---:|---:|" + "---:|" * len(batches)]
    first = frame.drop_duplicates("name").set_index("name")
    for name in first.index:
        p = first.loc[name]
        marked = [facts.get("accuracy", True) and bool(front.loc[name, b]) for b in batches]  # no front without top-1
        cells = [("\u2605 " if m else "") + _fmt(wide.loc[name, b]) + "x" for m, b in zip(marked, batches, strict=True)]
        top1 = _fmt(p["top1"]) if facts.get("accuracy", True) else "-"
        lines.append(
            f"| {p['family']} | {name} | {p['training']} | {top1} | {_fmt(p['blocks'])} | {_fmt(p['gflops'], '.4f')} "
            f"| {_fmt(p['flops_ratio'])}x | " + " | ".join(cells) + " |"
        )
    if "peak_mib" in frame.columns and frame["peak_mib"].notna().any():
        mem = frame.pivot_table(index="name", columns="batch", values="peak_mib", aggfunc="first")
        lines += [
            "",
            "Peak working memory (MiB) of one forward above the resident set before it (a child process measures each "
            "contender in turn; freed memory returned to the kernel and the peak counter reset before each forward):",
            "",
            "| contender | " + " | ".join(f"b{b}" for b in batches) + " |",
            "|---|" + "---:|" * len(batches),
        ]
        for name in first.index:
            lines.append(
                f"| {name} | "
                + " | ".join(_fmt(mem.loc[name, b], ".1f") if name in mem.index else "-" for b in batches)
                + " |"
            )
    base = frame[frame["name"] == facts["static_name"]].set_index("batch")["images_per_s"]
    lines += [
        "",
        "Static backbone images/s: " + ", ".join(f"{base[b]:,.0f} at batch {b}" for b in batches if b in base) + ".",
        "",
        "Settings (what produced each point):",
        "",
    ]
    for name in first.index:
        lines.append(f"- {name}: {first.loc[name, 'setting']}")
    lines.append("")
    return "\n".join(lines)


def plot_plane(frame: pd.DataFrame, batch: int, title: str) -> Figure:
    """Top-1 vs measured images/s at one batch: each family's points and own front, vitskip as stars, the front ringed."""
    g = frame[frame["batch"] == batch].copy()
    g["front"] = on_front(g)
    fig = Figure(figsize=(9.0, 5.6), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    for i, (family, f) in enumerate(g.groupby("family", sort=False)):
        ours, color = bool(f["vitskip"].iloc[0]), f"C{i % 10}"
        ax.scatter(
            f["images_per_s"],
            f["top1"],
            marker="*" if ours else "o",
            s=150 if ours else 25,
            color=color,
            alpha=1.0 if ours else 0.6,
            zorder=4 if ours else 3,
        )
        own = f[non_dominated_mask(-f[["top1", "images_per_s"]].to_numpy(dtype=float))].sort_values("images_per_s")
        ax.plot(
            own["images_per_s"],
            own["top1"],
            color=color,
            linewidth=2.0 if ours else 1.0,
            alpha=0.9,
            marker="*" if ours else "o",
            markersize=0,
            label=f"{family} ({len(f)})",
        )
    best = g[g["front"]].sort_values("images_per_s")
    ax.scatter(
        best["images_per_s"],
        best["top1"],
        s=160,
        facecolors="none",
        edgecolors="black",
        linewidths=1.2,
        zorder=6,
        label="measured Pareto front",
    )
    ax.set_xscale("log")
    ax.set_xlabel(f"measured images/s at batch {batch} (log)")
    ax.set_ylabel("top-1 accuracy (%)")
    lo = max(g["top1"].min(), g["top1"].max() - 8.0)
    ax.set_ylim(lo - 0.3, g["top1"].max() + 0.3)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def plot_speed_vs_flops(frame: pd.DataFrame, batch: int, title: str) -> Figure:
    """Speed only: measured speed-up over static vs counted FLOPs share, with the ideal ``1 / share`` drawn."""
    g = frame[frame["batch"] == batch].copy()
    share = g["gflops"] / float(g.loc[g["name"] == "static backbone", "gflops"].iloc[0])
    g["share"] = share
    fig = Figure(figsize=(8.0, 5.0), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    xs = np.linspace(max(0.05, float(share.min()) * 0.9), 1.05, 100)
    ax.plot(xs, 1 / xs, color="grey", linestyle="--", linewidth=1, label="ideal: speed-up = 1 / FLOPs share")
    for i, (family, f) in enumerate(g.groupby("family", sort=False)):
        ours = bool(f["vitskip"].iloc[0])
        ax.scatter(
            f["share"],
            f["speedup"],
            marker="*" if ours else "o",
            s=140 if ours else 40,
            color=f"C{i % 10}",
            label=family,
            zorder=5,
        )
    ax.set_xlabel("counted FLOPs, share of the static backbone")
    ax.set_ylabel(f"measured speed-up over static, batch {batch}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


__all__ = [
    "LEVELS",
    "RIVALS",
    "dominance",
    "equal_top1",
    "fastest_reaching",
    "goals",
    "markdown",
    "on_front",
    "plot_plane",
    "plot_speed_vs_flops",
]
