"""The measurement wing: accuracy, side-by-side speed and memory, synthetic models and env throughput.

``accuracy.py`` scores; ``speed.py`` times models interleaved in one process; ``contenders.py`` holds
the static / dynamic / random / static-subset contenders of ``train/benchmark.py``; ``memprobe.py``
runs in a child process for peak memory; ``env_throughput.py`` times the envs.
"""

from __future__ import annotations

from .accuracy import evaluate_backbone, random_skip_top1
from .contenders import accuracy_table, measure_speed, peak_memory_mib, random_masks_like
from .env_throughput import measure_env_throughput
from .speed import compare_speed
from .synthetic import synthetic_dynamic_vit

__all__ = [
    "accuracy_table",
    "compare_speed",
    "evaluate_backbone",
    "measure_env_throughput",
    "measure_speed",
    "peak_memory_mib",
    "random_masks_like",
    "random_skip_top1",
    "synthetic_dynamic_vit",
]
