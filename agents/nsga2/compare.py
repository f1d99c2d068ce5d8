"""The scientific comparison: a learned per-image skip policy against the best static subsets, at equal blocks.

Per-image decisions are only worth having if they beat the best *static* subset that runs the same
number of blocks. The static subsets are the layer search's front, selected on ``val``; every number
compared is measured on ``test``. At each size ``k`` the static reference is the front subset with at
most ``k`` kept blocks that is best on ``val`` (its ``test`` top-1 is used, never a ``test``-picked
one). The dynamic policy's mean executed blocks ``b`` is usually fractional, so the static reference
is given at ``round(b)`` and linearly interpolated between ``floor(b)`` and ``ceil(b)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def static_envelope(front: pd.DataFrame, depth: int) -> pd.DataFrame:
    """Best static subset with at most ``k`` kept blocks, for ``k = 1..depth`` (chosen on ``val``).

    Args:
        front: Layer-search rows with ``kept``, ``kept_blocks``, ``top1`` (``val``) and ``top1_test``.
        depth: Blocks of the backbone.

    Returns:
        One row per ``k`` that some subset reaches: ``k``, ``kept``, ``kept_blocks``, ``top1`` (val), ``top1_test``.
    """
    missing = [c for c in ("kept", "kept_blocks", "top1", "top1_test") if c not in front.columns]
    if missing:
        raise ValueError(f"the static front needs the columns kept, kept_blocks, top1, top1_test; missing {missing}")
    rows = []
    for k in range(1, depth + 1):
        fits = front[front["kept_blocks"] <= k]
        if len(fits):
            best = fits.sort_values(["top1", "kept_blocks"], ascending=[False, True]).iloc[0]
            rows.append({"k": k, **{c: best[c] for c in ("kept", "kept_blocks", "top1", "top1_test")}})
    return pd.DataFrame(rows)


def static_at(envelope: pd.DataFrame, blocks: float) -> dict[str, Any]:
    """The static reference at ``blocks`` mean blocks: ``rounded`` (at ``round(blocks)``) and ``interpolated`` test top-1."""
    by_k = envelope.set_index("k")
    ks = by_k.index.to_numpy()
    lo, hi = math.floor(blocks), math.ceil(blocks)
    rounded = int(np.clip(round(blocks), ks.min(), ks.max()))
    out: dict[str, Any] = {
        "rounded_k": rounded,
        "rounded_kept": by_k.loc[rounded, "kept"],
        "rounded_top1_test": float(by_k.loc[rounded, "top1_test"]),
    }
    if lo in by_k.index and hi in by_k.index:
        a, b = float(by_k.loc[lo, "top1_test"]), float(by_k.loc[hi, "top1_test"])
        out["interpolated_top1_test"] = a + (blocks - lo) * (b - a)
        out["interpolated_between"] = (by_k.loc[lo, "kept"], by_k.loc[hi, "kept"])
    else:
        out["interpolated_top1_test"] = float("nan")
        out["interpolated_between"] = None
    return out


def compare_dynamic_static(front: pd.DataFrame, dynamic: Mapping[str, float], depth: int) -> dict[str, Any]:
    """Dynamic policy vs static front at equal mean executed blocks (all top-1 on ``test``).

    Args:
        front: Layer-search front with ``top1_test`` (see :func:`static_envelope`).
        dynamic: ``{"executed_blocks": mean blocks per image, "top1_test": ..., optionally "top1": val}``.
        depth: Blocks of the backbone.

    Returns:
        ``envelope`` (frame), ``dynamic`` (the input), the :func:`static_at` entries, ``gain_rounded``
        / ``gain_interpolated`` (dynamic minus static, points) and ``static_blocks_to_match`` (fewest
        static blocks whose test top-1 reaches the dynamic one, ``None`` if none does).
    """
    env = static_envelope(front, depth)
    if not len(env):
        raise ValueError("the static front is empty: nothing to compare the dynamic policy with")
    b, dyn_top1 = float(dynamic["executed_blocks"]), float(dynamic["top1_test"])
    ref = static_at(env, b)
    reaching = env[env["top1_test"] >= dyn_top1]
    return {
        "envelope": env,
        "dynamic": dict(dynamic),
        **ref,
        "gain_rounded": dyn_top1 - ref["rounded_top1_test"],
        "gain_interpolated": dyn_top1 - ref["interpolated_top1_test"],
        "static_blocks_to_match": int(reaching["k"].min()) if len(reaching) else None,
    }


def comparison_markdown(
    result: Mapping[str, Any],
    *,
    title: str,
    source: str = "the layer search's front",
    finetuned: Mapping[str, Any] | None = None,
    finetune_note: str = "fine-tuned static subsets",
    notes: str = "",
) -> str:
    """The comparison as one markdown table plus the verdict.

    Args:
        result: From :func:`compare_dynamic_static` (static subsets with the policy's own backbone weights).
        title: Heading.
        source: Where the static subsets come from (a phrase).
        finetuned: Optionally the same comparison against fine-tuned static subsets (extra training).
        finetune_note: What ``finetuned`` is (a phrase, e.g. "static subsets fine-tuned for 300 steps").
        notes: A closing paragraph.
    """
    dyn = result["dynamic"]
    b = float(dyn["executed_blocks"])
    lines = [
        f"# {title}",
        "",
        f"Static subsets: {source}, each size's subset picked on `val`; every top-1 below is on `test`.",
        "",
        "| model | blocks run per image | kept subset | top-1 val | top-1 test |",
        "|---|---:|---|---:|---:|",
    ]
    for row in result["envelope"].itertuples():
        lines.append(
            f"| best static, <= {row.k} blocks | {row.kept_blocks} | `{row.kept}` | {row.top1:.2f} | {row.top1_test:.2f} |"
        )
    val = f"{dyn['top1']:.2f}" if "top1" in dyn else ""
    lines.append(f"| **dynamic policy** | **{b:.2f}** (mean) | per image | {val} | **{dyn['top1_test']:.2f}** |")
    lines += ["", f"At equal mean executed blocks ({b:.2f}):", ""]
    lines += ["| reference | static top-1 test | dynamic minus static (points) |", "|---|---:|---:|"]
    lines += _reference_rows(result, b, "best static")
    if finetuned is not None:
        lines += _reference_rows(finetuned, b, f"best of the {finetune_note}")
    lines += ["", _verdict(result, b, "the best static subset of equal size")]
    if finetuned is not None:
        lines += ["", _verdict(finetuned, b, f"the best of the {finetune_note} of equal size")]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def _reference_rows(result: Mapping[str, Any], b: float, label: str) -> list[str]:
    between = result["interpolated_between"]
    interp = (
        f"{result['interpolated_top1_test']:.2f} (between `{between[0]}` and `{between[1]}`)"
        if between is not None
        else "n/a (no static subset on both sides)"
    )
    return [
        f"| {label} at round({b:.2f}) = {result['rounded_k']} blocks (`{result['rounded_kept']}`) | "
        f"{result['rounded_top1_test']:.2f} | {result['gain_rounded']:+.2f} |",
        f"| {label} interpolated at {b:.2f} blocks | {interp} | {result['gain_interpolated']:+.2f} |",
    ]


def _verdict(result: Mapping[str, Any], b: float, reference: str) -> str:
    gain = result["gain_interpolated"]
    if gain != gain:  # NaN: no interpolation possible
        gain = result["gain_rounded"]
    if gain > 0:
        head = f"The per-image policy beats {reference} by {gain:.2f} points"
    else:
        head = f"The per-image policy does not beat {reference} ({gain:+.2f} points)"
    match = result["static_blocks_to_match"]
    if match is None:
        tail = "no static subset there reaches its test top-1."
    else:
        tail = f"a static subset needs {match} blocks to reach its test top-1 (the policy runs {b:.2f} on average)."
    return f"{head}; {tail}"
