"""``python -m analysis.cotrain RUN... --out DIR``: the co-training comparison of several ``train/joint.py`` runs (seeds).

Reads each run's ``joint.json`` (written by ``train/joint.py``) and writes ``DIR/cotrain.md`` and
``DIR/cotrain.csv``: per seed, then mean and spread (half the range), of what the co-training issue
asks for: the co-trained policy's top-1 and executed blocks, the equally fine-tuned static backbone's
top-1 and the difference, the margin over the fine-tuned static front at equal executed blocks (the
FLOPs view, beside the measured one), and at each timed batch size the speed-up over the static backbone and the
margin over the equally fine-tuned static front at the policy's measured images/s; the frozen-backbone
policy beside it. Every run's own ``comparison.md`` holds its full table.

Pure pandas (reads JSON only).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vitskip_env.files import atomic_path, atomic_write_text

from .cli import print_written

POLICIES = ("policy, co-trained", "policy, frozen backbone")


def read_joint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``joint.json`` (``FileNotFoundError`` naming the command that writes it)."""
    p = Path(run_dir) / "joint.json"
    if not p.is_file():
        raise FileNotFoundError(f"no joint.json in {str(run_dir)!r}: pass run directories of train/joint.py (its last "
                                "phase writes it; --resume RUN finishes an interrupted run)")  # fmt: skip
    return json.loads(p.read_text(encoding="utf-8"))


def rows(run_dirs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per run and policy: the targets of ``joint.json`` flattened (``b<batch>_*`` columns per batch size)."""
    out = []
    for d in run_dirs:
        j = read_joint(d)
        full = next((r["top1"] for r in j["rows"] if r["name"] == "static, fine-tuned"), None)
        static = next(r["top1"] for r in j["rows"] if r["name"] == "static")
        for policy in POLICIES:
            t = j["targets"].get(policy)
            if t is None:
                continue
            row = {"env": j["env"], "seed": j["seed"], "policy": policy, "top1": t["top1"],
                   "executed_blocks": t["executed_blocks"], "executed_frac": t["executed_frac"], "static_top1": static,
                   "full_finetuned_top1": full, "minus_full_finetuned": t.get("minus_full_finetuned")}  # fmt: skip
            row["equal_blocks_front_top1"] = blocks_front(j["rows"], t["executed_blocks"])
            row["equal_blocks_margin"] = t["top1"] - row["equal_blocks_front_top1"]
            for key, value in t.items():
                if key.startswith("b") and isinstance(value, dict):
                    row[f"{key}_speedup"] = value["speedup"]
                    row[f"{key}_front_top1"] = value["static_ft_front_top1"]
                    row[f"{key}_margin"] = value["margin"]
            out.append(row)
    return pd.DataFrame(out)


def blocks_front(table: list[dict[str, Any]], blocks: float) -> float:
    """Top-1 of the fine-tuned static front at ``blocks`` executed blocks (the FLOPs view: linear between its points)."""
    pts = sorted((r["executed_blocks"], r["top1"]) for r in table if r["family"] == "static, fine-tuned")
    xs = np.array([p[0] for p in pts])
    best = np.maximum.accumulate(np.array([p[1] for p in pts]))  # the best top-1 with at most that many blocks
    return float(np.interp(blocks, xs, best))


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (half the range) over seeds of every numeric column, per env and policy."""
    numeric = [c for c in frame.columns if c not in ("env", "seed", "policy") and pd.api.types.is_numeric_dtype(frame[c])]
    g = frame.groupby(["env", "policy"], sort=False)[numeric]
    mean, spread = g.mean(), (g.max() - g.min()) / 2
    spread.columns = [f"{c}_spread" for c in spread.columns]
    return pd.concat([mean, spread, g.size().rename("seeds")], axis=1).reset_index()


def markdown(frame: pd.DataFrame, agg: pd.DataFrame, cmd: str) -> str:
    """The per-seed and mean +- spread tables."""
    batches = sorted({c.split("_")[0] for c in frame.columns if c.startswith("b") and c.endswith("_margin")},
                     key=lambda b: int(b[1:]))  # fmt: skip
    head = (
        "| task | policy | seed | top-1 | blocks | fine-tuned static top-1 | vs it (pt) | margin at equal blocks (pt) | "
        + " | ".join(f"x static {b} | margin over fine-tuned static front {b} (pt)" for b in batches)
    )
    sep = "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(batches)
    lines = [f"`{cmd}`", "", head + " |", sep]
    for _, r in frame.iterrows():
        cells = " | ".join(f"{r[f'{b}_speedup']:.2f} | {r[f'{b}_margin']:+.2f}" for b in batches)
        lines.append(f"| {r['env']} | {r['policy']} | {r['seed']} | {r['top1']:.2f} | {r['executed_blocks']:.2f} | "
                     f"{r['full_finetuned_top1']:.2f} | {r['minus_full_finetuned']:+.2f} | {r['equal_blocks_margin']:+.2f} | "
                     f"{cells} |")  # fmt: skip
    lines += ["", "Mean +- spread (half the range) over seeds:", "", head.replace("| seed ", "| seeds ") + " |", sep]
    for _, r in agg.iterrows():

        def ms(col: str, fmt: str = ".2f", r: Any = r) -> str:
            return f"{r[col]:{fmt}} +- {r[col + '_spread']:.2f}"

        cells = " | ".join(f"{ms(f'{b}_speedup')} | {ms(f'{b}_margin', '+.2f')}" for b in batches)
        lines.append(f"| {r['env']} | {r['policy']} | {r['seeds']} | {ms('top1')} | {ms('executed_blocks')} | "
                     f"{ms('full_finetuned_top1')} | {ms('minus_full_finetuned', '+.2f')} | "
                     f"{ms('equal_blocks_margin', '+.2f')} | {cells} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write ``cotrain.md`` and ``cotrain.csv`` to ``out``; returns the markdown's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = rows(run_dirs)
    if frame.empty:
        raise ValueError("no policy rows in the given runs' joint.json")
    agg = aggregate(frame)
    with atomic_path(out / "cotrain.csv") as tmp:
        frame.to_csv(tmp, index=False)
    cmd = "python -m analysis.cotrain " + " ".join(Path(d).name for d in run_dirs)
    path = out / "cotrain.md"
    atomic_write_text(path, "# Co-training vs equally fine-tuned static models\n\n" + markdown(frame, agg, cmd))
    return path


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m analysis.cotrain", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="train/joint.py run directories")
    parser.add_argument("--out", required=True, help="output folder")
    a = parser.parse_args(argv)
    return print_written(write, a.runs, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
