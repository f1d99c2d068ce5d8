"""NSGA-II (pymoo) searches: static layer subsets, reward weightings, and joint RL + NSGA-II.

Every search writes its Pareto front in one format (:mod:`agents.nsga2.front`); ``train/nsga2.py``
is the command line. :func:`evaluate_subsets` scores a whole population of static block subsets in
one vectorised pass (prefix sharing, :mod:`agents.nsga2.trie`); :func:`evaluate_joint` does the
same for a trained skip agent restricted to each subset.
"""

from __future__ import annotations

from .front import FRONT_COLUMNS, mask_to_str, non_dominated, read_front, str_to_mask, write_front
from .joint import JointSubsetProblem, SubsetDynamicViT, evaluate_joint, reward_weights, search_joint
from .layers import LayerSubsetProblem, binary_nsga2, evaluate_subsets, finetune, search_layers
from .rewards import search_rewards

__all__ = [
    "FRONT_COLUMNS",
    "JointSubsetProblem",
    "LayerSubsetProblem",
    "SubsetDynamicViT",
    "binary_nsga2",
    "evaluate_joint",
    "evaluate_subsets",
    "finetune",
    "mask_to_str",
    "non_dominated",
    "read_front",
    "reward_weights",
    "search_joint",
    "search_layers",
    "search_rewards",
    "str_to_mask",
    "write_front",
]
