"""Env throughput benchmark (``pytest -m benchmark tests/benchmarks``); never part of the default run.

Writes ``benchmarks/results/env_throughput.{csv,md}``. Run it alone on an otherwise idle machine:
two benchmark processes at once, or a training job beside it, make the numbers meaningless.
For large batches set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` before starting
Python (see docs/architecture.md); the settings used are recorded in the output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vitskip_env.measure.env_throughput import measure_env_throughput, write_results
from vitskip_env.model import find_backbone

#: Where the tables go (``VITSKIP_BENCH_RESULTS`` overrides it: ``benchmarks/gpu.sh`` writes ``*_cuda`` folders).
RESULTS = Path(os.environ.get("VITSKIP_BENCH_RESULTS", Path(__file__).resolve().parents[2] / "benchmarks" / "results"))
#: The lowest acceptable value of each reported ratio: the native env at 256 images keeps 80% of the
#: compute floor's speed, and at 64 images runs at least twice as fast as Gymnasium's sync vectorisation.
MIN_RATIOS: dict[str, float] = {"native256 / floor256": 0.8, "native64 / sync64": 2.0}


def _measure(name: str, **extra: object) -> tuple[dict, Path]:
    """Measure the demo backbone's shapes env (``extra``: more env keyword arguments) and write ``<name>.{csv,md}``."""
    threads = int(os.environ.get("VITSKIP_BENCH_THREADS", str(os.cpu_count() or 1)))
    torch.set_num_threads(threads)
    trained = find_backbone("demo", "shapes") is not None
    kwargs = {
        "backbone": "demo",
        "backbone_weights": "trained" if trained else "random",  # the same compute either way
        "split": "test",
        "device": os.environ.get("VITSKIP_BENCH_DEVICE", "auto"),
        **extra,
    }
    rounds = int(os.environ.get("VITSKIP_BENCH_ROUNDS", "5"))
    steps = int(os.environ.get("VITSKIP_BENCH_STEPS", "4096"))  # benchmarks/gpu.sh --smoke: a few hundred
    configs = os.environ.get("VITSKIP_BENCH_CONFIGS")  # e.g. "sync64,native64" (benchmarks/gpu.sh --smoke)
    extra_kw = {"configs": tuple(configs.split(","))} if configs else {}
    result = measure_env_throughput("ViTSkip-Shapes-v0", kwargs, rounds=rounds, steps_per_round=steps, **extra_kw)
    _, md_path = write_results(result, RESULTS, name=name)
    print(md_path.read_text())
    assert all(row["steps_per_s"] > 0 for row in result["rows"])
    return result, md_path


@pytest.mark.benchmark
def test_env_throughput() -> None:
    result, md_path = _measure("env_throughput")
    if os.environ.get("VITSKIP_BENCH_SMOKE"):  # benchmarks/gpu.sh --smoke: toy sizes, the ratios mean nothing
        return
    # Asserted so that a regression shows up when this is run.
    for ratio in result["ratios"]:
        low = MIN_RATIOS[ratio["ratio"]]
        assert ratio["median"] >= low, f"{ratio['ratio']} = {ratio['median']:.2f}, expected >= {low} (see {md_path})"


@pytest.mark.benchmark
def test_env_throughput_skip_exit() -> None:
    """``actions="skip_exit"`` (linear exits after blocks 4-7): episodes of different lengths, rows restarting alone."""
    _measure("env_throughput_skip_exit", actions="skip_exit", exits="linear")
