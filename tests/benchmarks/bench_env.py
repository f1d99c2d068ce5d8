"""Env throughput benchmark (``pytest -m benchmark tests/benchmarks``); never part of the default run.

Writes ``benchmarks/results/env_throughput.{csv,md}``. Run it alone on an otherwise idle machine:
two benchmark processes at once, or a training job beside it, make the numbers meaningless.
For large batches set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` before starting
Python (see ARCHITECTURE.md); the settings used are recorded in the output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vitskip_env.measure.env_throughput import measure_env_throughput, write_results
from vitskip_env.model import find_backbone

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.benchmark
def test_env_throughput() -> None:
    threads = int(os.environ.get("VITSKIP_BENCH_THREADS", str(os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    trained = find_backbone("demo", "shapes") is not None
    kwargs = {
        "backbone": "demo",
        "backbone_weights": "trained" if trained else "random",  # the same compute either way
        "split": "test",
        "device": os.environ.get("VITSKIP_BENCH_DEVICE", "auto"),
    }
    result = measure_env_throughput("ViTSkip-Shapes-v0", kwargs, rounds=int(os.environ.get("VITSKIP_BENCH_ROUNDS", "5")))
    _, md_path = write_results(result, RESULTS)
    print(md_path.read_text())
    rates = {row["config"]: row["steps_per_s"] for row in result["rows"]}
    assert all(rate > 0 for rate in rates.values())
    # The goals, reported in the markdown; asserted so a regression shows up when this is run.
    for ratio in result["ratios"]:
        assert ratio["met"], f"{ratio['ratio']} = {ratio['median']:.2f}, goal >= {ratio['goal']} (see {md_path})"
