"""The deployment wing: the trained policy as a torch module (``SkipPolicy``), the deployable
``DynamicViT`` (batched real skipping), the folded decision and the policy network description.
It must not import the env wing: what it shares with the env is the observation contract.
"""

from __future__ import annotations

from .dynamic import DynamicViT
from .fused import FusedDecision, weights_key
from .netspec import build_net, describe_net, supported_layers
from .policy import SkipPolicy, deterministic_action

__all__ = [
    "DynamicViT",
    "FusedDecision",
    "SkipPolicy",
    "build_net",
    "describe_net",
    "deterministic_action",
    "supported_layers",
    "weights_key",
]
