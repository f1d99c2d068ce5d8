"""Readers for the other results the analysis plots: run summaries, NSGA-II fronts, benchmark tables.

Files are read with pandas (and PyYAML for ``args.yaml``) and their columns checked here, so the
analysis never imports the training code that wrote them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

#: Columns of every NSGA-II front (the format ``train/nsga2.py`` writes): ``search``, ``top1`` (%),
#: ``error`` (``100 - top1``), ``executed_blocks`` (mean per image), ``executed_frac`` (of depth),
#: ``compute`` (share of block FLOPs), ``split``; layer searches add ``kept`` (mask string, block 0 first).
FRONT_COLUMNS: tuple[str, ...] = ("search", "top1", "error", "executed_blocks", "executed_frac", "compute", "split")
#: Columns of the benchmark table (``train/benchmark.py``): one row per device x dtype x batch x model,
#: ``model`` one of ``static``, ``dynamic``, ``random``, ``static_subset``.
BENCHMARK_COLUMNS: tuple[str, ...] = (
    "device", "dtype", "threads", "batch", "model", "images_per_s", "ms_per_batch", "speedup",
    "executed_blocks", "ideal_speedup", "efficiency", "top1", "peak_mem_mib",
)  # fmt: skip
#: The benchmark columns the throughput plot needs.
BENCHMARK_REQUIRED: tuple[str, ...] = ("device", "dtype", "batch", "model", "images_per_s")
SUMMARY_FILE = "summary.json"


def _read_table(path: Path, what: str, hint: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}; {hint}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"kept": str})
    raise ValueError(f"{str(path)!r}: a {what} is a .parquet or .csv file, got {path.suffix or 'no suffix'!r}")


def _check_columns(frame: pd.DataFrame, needed: Sequence[str], what: str, where: str) -> pd.DataFrame:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{where} is not {what}: missing columns {missing} (has {list(frame.columns)})")
    return frame


def read_front(path: str | os.PathLike) -> pd.DataFrame:
    """An NSGA-II front (``front.parquet`` / ``front.csv``, or the folder holding ``front.parquet``).

    Raises:
        FileNotFoundError: No front there.
        ValueError: A column of :data:`FRONT_COLUMNS` is missing.
    """
    p = Path(path)
    p = p / "front.parquet" if p.is_dir() else p
    frame = _read_table(p, "NSGA-II front", "train/nsga2.py writes front.parquet into its --out folder")
    return _check_columns(frame, FRONT_COLUMNS, "an NSGA-II front", repr(str(p)))


def read_benchmark(path: str | os.PathLike) -> pd.DataFrame:
    """The benchmark table of ``train/benchmark.py`` (``.parquet`` or ``.csv``).

    Raises:
        FileNotFoundError: No such file.
        ValueError: A column of :data:`BENCHMARK_REQUIRED` is missing.
    """
    p = Path(path)
    frame = _read_table(p, "benchmark table", "train/benchmark.py writes it")
    return _check_columns(frame, BENCHMARK_REQUIRED, "a benchmark table", repr(str(p)))


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run directory's ``summary.json``.

    Raises:
        FileNotFoundError: The directory has none (training did not finish).
    """
    p = Path(run_dir) / SUMMARY_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"no {SUMMARY_FILE} in {str(run_dir)!r}: pass a run directory of a finished train/ppo.py (a2c, reinforce) "
            "run; an interrupted run writes it after --resume completes"
        )
    return json.loads(p.read_text(encoding="utf-8"))


def read_args(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run directory's ``args.yaml`` (empty when there is none)."""
    p = Path(run_dir) / "args.yaml"
    if not p.is_file():
        return {}
    import yaml

    return yaml.safe_load(p.read_text(encoding="utf-8")) or {}


def speed_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """A run summary's static-vs-dynamic speed comparison in the benchmark table's format.

    One row per batch size x model (``static``, ``dynamic``) with ``device``, ``dtype`` (``float32``),
    ``threads``, ``batch``, ``model``, ``images_per_s``, ``ms_per_batch``, ``speedup``, ``executed_blocks``, ``top1``.
    """
    rows = []
    for batch, models in summary.get("speed", {}).items():
        for model, v in models.items():
            dynamic = model == "dynamic"
            rows.append({
                "device": summary.get("device", "unknown"), "dtype": "float32", "threads": summary.get("threads"),
                "batch": int(batch), "model": model, "images_per_s": v["images_per_s"], "ms_per_batch": v["ms_per_batch"],
                "speedup": v["speedup"], "executed_blocks": summary["executed_blocks"] if dynamic else summary["depth"],
                "top1": summary["top1_dynamic"] if dynamic else summary["top1_static"],
            })  # fmt: skip
    return pd.DataFrame(rows, columns=[*BENCHMARK_COLUMNS[:8], "executed_blocks", "top1"])


def runs_frame(run_dirs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per run directory from its ``summary.json`` and ``args.yaml``.

    Columns: ``run`` (directory name), ``env``, ``algo``, ``seed``, ``compute_weight``,
    ``total_timesteps``, ``depth``, ``test_images``, ``top1_static``, ``top1_dynamic``,
    ``executed_blocks``, ``executed_frac``, ``difficulty_corr`` and ``speedup_b<batch>`` per measured batch.
    """
    rows = []
    for run_dir in run_dirs:
        s, args = read_summary(run_dir), read_args(run_dir)
        row = {"run": Path(run_dir).name, "env": s["env"], "algo": s["algo"], "seed": s["seed"],
               "compute_weight": args.get("compute_weight", math.nan)}  # fmt: skip
        row |= {k: s.get(k) for k in ("total_timesteps", "depth", "test_images", "top1_static", "top1_dynamic",
                                      "executed_blocks", "executed_frac", "difficulty_corr")}  # fmt: skip
        row["difficulty_corr"] = math.nan if row["difficulty_corr"] is None else row["difficulty_corr"]
        row |= {f"speedup_b{b}": v["dynamic"]["speedup"] for b, v in s.get("speed", {}).items()}
        rows.append(row)
    return pd.DataFrame(rows)
