"""Which blocks get skipped for which images: pandas frames, statistics, plots and reports of runs.

Pure pandas / matplotlib: nothing here imports torch or the training code. Files are written
atomically by ``vitskip_env.files`` (torch-free, as is ``import vitskip_env``); ``skip_frame``
imports torch and the ``vitskip_env`` wings that use it only when handed a ``DynamicViT`` to run.

- :mod:`analysis.frames`: ``skip_frame(run_dir)`` -> the tidy frame (one row per image x block), its columns; wide forms.
- :mod:`analysis.stats`: execute rates, depth per class / difficulty, co-execution, common paths, Pareto fronts.
- :mod:`analysis.plots`: heatmaps, depth histograms, accuracy vs depth, throughput, Pareto plots (PNG + SVG).
- :mod:`analysis.readers`: run summaries, NSGA-II fronts and benchmark tables, their columns checked.
- :mod:`analysis.report`: ``python -m analysis.report RUN_DIR [RUN_DIR ...]`` -> ``report.md`` + ``plots/``.
"""

from .frames import COLUMNS, image_frame, skip_frame, wide_frame

__all__ = ["COLUMNS", "image_frame", "skip_frame", "wide_frame"]
