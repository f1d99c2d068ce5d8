"""Markdown summaries of the layer-subset and joint searches (``summary.md`` of ``train/nsga2.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """A markdown table: ``align`` holds one ``l`` or ``r`` per column (default: first left, others right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(headers) + " |", rule, *("| " + " | ".join(row) + " |" for row in cells)]


def _removed(c: Mapping[str, Any], depth: int) -> str:
    return f"`{c['kept']}` removes {c['removed_blocks']} of {depth} blocks ({100 * c['removed_blocks'] / depth:.0f}%)"


def _scoring(s: Mapping[str, Any]) -> str:
    cache = s.get("prefix_cache") or {}
    reused = f"; {cache['hits']:,} prefix states reused from earlier generations" if cache.get("hits") else ""
    return f"scoring took {s['scoring_seconds']} s of {s['search_seconds']} s{reused}"


def layers_markdown(s: Mapping[str, Any], *, env: str, seed: int, tolerance: float, cost_model: str) -> str:
    """``summary.md`` of a layer-subset search (``s``: the ``summary.json`` content)."""
    ft = s.get("finetune_steps", 0) > 0
    headers = ["kept (block 0 first)", "blocks removed", "compute", "top-1 val", "top-1 test"]
    headers += ["val fine-tuned", "test fine-tuned"] if ft else []
    rows = []
    for r in s["front"]:
        row = [f"`{r['kept']}`", r["removed_blocks"], f"{r['compute']:.3f}", r["top1"], r["top1_test"]]
        rows.append(row + ([r["top1_ft"], r["top1_test_ft"]] if ft else []))
    lines = [
        f"# NSGA-II layer-subset search · {env} · seed {seed}",
        "",
        f"Fitness: top-1 on {s['val_images']:,} val images and the kept share of block {cost_model}. "
        f"{s['subsets_scored']} distinct subsets scored for {s['subsets_requested']} evaluations "
        f"({_scoring(s)}). Test: {s['test_images']:,} images.",
        "",
        f"Full model ({s['depth']} blocks): top-1 val {s['full_top1_val']:.2f}, test {s['full_top1_test']:.2f}.",
        "",
        *md_table(headers, rows),
        "",
    ]
    c = s["chosen"]
    if c is None:
        lines.append(f"No subset on the front stays within {tolerance} point(s) of the full model on val.")
    else:
        val, test = ("top1_ft", "top1_test_ft") if ft else ("top1", "top1_test")
        lines.append(
            f"Chosen (fewest blocks within {tolerance} point(s) of the full model on val{', fine-tuned' if ft else ''}): "
            f"{_removed(c, s['depth'])}: top-1 val {c[val]:.2f} ({c[val] - s['full_top1_val']:+.2f}), "
            f"test {c[test]:.2f} ({c[test] - s['full_top1_test']:+.2f}); model `{c['model']}`."
        )
    if "comparison" in s:
        d = s["comparison"]
        lines += [
            "",
            f"Dynamic policy vs the static front at equal blocks (comparison.md): the policy runs "
            f"{d['dynamic']['executed_blocks']:.2f} blocks at {d['dynamic']['top1_test']:.2f} test top-1, "
            f"{d['gain_interpolated']:+.2f} points against the interpolated best static subset"
            + (f", {d['finetuned']['gain_interpolated']:+.2f} against the fine-tuned ones." if "finetuned" in d else "."),
        ]
    return "\n".join(lines) + "\n"


def joint_markdown(s: Mapping[str, Any], *, env: str, seed: int, tolerance: float) -> str:
    """``summary.md`` of a joint RL + NSGA-II search."""
    ref, w = s["unrestricted"], s["weights"]
    reward = f"{w['correct']} x correct - {w['compute']} x compute share"
    reward += f" + {w['confidence']} x log p(true class)" if w["confidence"] else ""
    headers = [
        "kept (block 0 first)",
        "blocks removed",
        "reward val",
        "top-1 val",
        "blocks run val",
        "top-1 test",
        "blocks run test",
    ]
    rows = [
        [label, removed, f"{r['reward']:.4f}", r["top1"], r["executed_blocks"], r["top1_test"], r["executed_blocks_test"]]
        for label, removed, r in [
            (f"`{ref['kept']}` (all blocks)", 0, ref),
            *((f"`{r['kept']}`", r["removed_blocks"], r) for r in s["front"]),
        ]
    ]
    lines = [
        f"# Joint RL + NSGA-II · {env} · seed {seed}",
        "",
        f"Agent: `{s['run']}`. Fitness of a subset: the agent's mean episode reward ({reward}) on {s['val_images']:,} val "
        f"images while it skips dynamically among the kept blocks. {s['subsets_scored']} distinct subsets scored "
        f"({_scoring(s)}). Test: {s['test_images']:,} images.",
        "",
        *md_table(headers, rows),
    ]
    for label, c in (("Highest reward", s["best_reward"]), (f"Most removed within {tolerance} point(s) on val", s["within"])):
        if c is None:
            lines += ["", f"{label}: none."]
            continue
        lines += [
            "",
            f"{label}: {_removed(c, s['depth'])}; the agent then runs {c['executed_blocks_test']:.2f} blocks per image at "
            f"{c['top1_test']:.2f} test top-1 ({c['top1_test'] - ref['top1_test']:+.2f} against all blocks); model "
            f"`{c['model']}`.",
        ]
    return "\n".join(lines) + "\n"
