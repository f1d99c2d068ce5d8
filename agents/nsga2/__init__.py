"""NSGA-II (pymoo) searches: static layer subsets, reward weightings, and joint RL + NSGA-II.

Every search writes its Pareto front in one format (:mod:`agents.nsga2.front`); ``train/nsga2.py``
is the command line.
"""

from __future__ import annotations

from .front import FRONT_COLUMNS, mask_to_str, non_dominated, read_front, str_to_mask, write_front

__all__ = ["FRONT_COLUMNS", "mask_to_str", "non_dominated", "read_front", "str_to_mask", "write_front"]

from .rewards import search_rewards

__all__ += ["search_rewards"]
