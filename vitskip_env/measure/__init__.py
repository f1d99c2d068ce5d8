"""The measurement wing: accuracy, side-by-side speed and memory, synthetic models and env throughput.

``accuracy.py`` holds the one scorer (:func:`score`: every top-1 of the project); ``speed.py`` times
models side by side, interleaved in one process; ``contenders.py`` holds the static / dynamic /
random / static-subset contenders of ``train/benchmark.py``; ``memprobe.py`` runs in a child process
for peak memory; ``synthetic.py`` builds random-weight models for speed only; ``env_throughput.py`` times the envs.
"""

from __future__ import annotations

from .accuracy import Score, evaluate_backbone, random_skip_top1, score
from .contenders import accuracy_table, measure_speed, peak_memory_mib, random_masks_like
from .env_throughput import measure_env_throughput
from .speed import compare_speed
from .synthetic import synthetic_dynamic_vit

__all__ = [
    "Score",
    "accuracy_table",
    "compare_speed",
    "evaluate_backbone",
    "measure_env_throughput",
    "measure_speed",
    "peak_memory_mib",
    "random_masks_like",
    "random_skip_top1",
    "score",
    "synthetic_dynamic_vit",
]
