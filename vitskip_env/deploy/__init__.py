"""The deployment wing: the trained policy as a torch module (``SkipPolicy``), the deployable
``DynamicViT`` (batched real skipping), ``EarlyExitViT`` with the exit rules and ``SkipExitViT``
with an RL skip-and-exit policy (exited images leave the batch), ``SkipMergeViT`` (skipping + token
merging), the folded decision (``FoldedDecision``) and the policy network description. It must not
import the env wing: what it shares with the env is the contract (the observation encoder and the
skip rules, :mod:`vitskip_env.observations` and :mod:`vitskip_env.rules`).
"""

from __future__ import annotations

from ..runtime import weights_key
from .dynamic import DynamicViT
from .early_exit import EarlyExitViT
from .exit_rules import RULES, ExitRule, calibrate, point_costs, simulate
from .folded import FoldedDecision
from .netspec import build_net, describe_net, supported_layers
from .policy import SkipPolicy, deterministic_action
from .skip_exit import SkipExitViT
from .skip_merge import SkipMergeViT

__all__ = [
    "RULES",
    "DynamicViT",
    "EarlyExitViT",
    "ExitRule",
    "FoldedDecision",
    "SkipExitViT",
    "SkipMergeViT",
    "SkipPolicy",
    "build_net",
    "calibrate",
    "describe_net",
    "deterministic_action",
    "point_costs",
    "simulate",
    "supported_layers",
    "weights_key",
]
