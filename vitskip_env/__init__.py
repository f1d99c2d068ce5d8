"""vitskip environments: learn, per image, which Vision Transformer blocks to skip.

Importing the package registers the Gymnasium ids (idempotently; Gymnasium 1.x ignores entry-point
plugins, so registration happens on import) and nothing more: it imports neither torch nor timm.
The public names below load on first use (PEP 562), from the wing that owns them:

- ``vitskip_env.model``: ``SkippableViT``, ``TokenMergingViT`` (ToMe), ``load_backbone``, presets, file formats;
- ``vitskip_env.data``: ``make_dataset``, ``ImageDataset``, the built-in ``shapes`` and ``relations``, real datasets;
- ``vitskip_env.observations`` / ``vitskip_env.rules``: the contract the env and deployment share;
- ``vitskip_env.env``: ``SkipCore``, ``ViTSkipEnv``, ``ViTSkipVectorEnv``, options, rewards;
- ``vitskip_env.deploy``: ``SkipPolicy``, ``DynamicViT``, ``SkipMergeViT`` (skipping + token merging);
- ``vitskip_env.measure``: accuracy, speed, memory and env throughput measurements.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

import gymnasium as gym

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and IDEs
    from .data import ImageDataset, available_datasets, make_dataset
    from .deploy import DynamicViT, EarlyExitViT, ExitRule, SkipExitViT, SkipMergeViT, SkipPolicy
    from .env import CotrainConfig, RewardContext, SkipCore, ViTSkipEnv, ViTSkipVectorEnv
    from .model import PRESETS, SkippableViT, TokenMergingViT, load_backbone, rows_per_block
    from .observations import ObservationEncoder
    from .rules import SkipRules

__version__ = "0.1.0"

#: Registered id -> dataset name (ids differ only in ``kwargs``).
ENV_IDS: dict[str, str] = {
    "ViTSkip-Shapes-v0": "shapes",
    "ViTSkip-Relations-v0": "relations",
    "ViTSkip-Pointers-v0": "pointers",
    "ViTSkip-CIFAR10-v0": "cifar10",
    "ViTSkip-CIFAR100-v0": "cifar100",
    "ViTSkip-TinyImageNet-v0": "tinyimagenet",
}
if importlib.util.find_spec("sklearn") is not None:
    ENV_IDS["ViTSkip-Digits-v0"] = "digits"

#: Registered id -> dataset name of the patch-dropping envs (an episode is one training run).
PATCHDROP_ENV_IDS: dict[str, str] = {
    "ViTPatchDrop-Shapes-v0": "shapes",
    "ViTPatchDrop-Relations-v0": "relations",
    "ViTPatchDrop-Pointers-v0": "pointers",
    "ViTPatchDrop-CIFAR10-v0": "cifar10",
    "ViTPatchDrop-CIFAR100-v0": "cifar100",
    "ViTPatchDrop-TinyImageNet-v0": "tinyimagenet",
}

#: Gymnasium entry points (strings: nothing is imported until an env is made).
ENTRY_POINT = "vitskip_env.env.single_env:ViTSkipEnv"
PATCHDROP_ENTRY_POINT = "vitskip_env.env.patchdrop_env:ViTPatchDropEnv"
VECTOR_ENTRY_POINT = "vitskip_env.env.vector_env:ViTSkipVectorEnv"

#: Public name -> the module that defines it (imported on first attribute access).
_LAZY: dict[str, str] = {
    "SkippableViT": "vitskip_env.model",
    "load_backbone": "vitskip_env.model",
    "rows_per_block": "vitskip_env.model",
    "PRESETS": "vitskip_env.model",
    "ImageDataset": "vitskip_env.data",
    "available_datasets": "vitskip_env.data",
    "make_dataset": "vitskip_env.data",
    "ObservationEncoder": "vitskip_env.observations",
    "SkipCore": "vitskip_env.env",
    "ViTSkipEnv": "vitskip_env.env",
    "ViTSkipVectorEnv": "vitskip_env.env",
    "CotrainConfig": "vitskip_env.env",
    "RewardContext": "vitskip_env.env",
    "SkipPolicy": "vitskip_env.deploy",
    "DynamicViT": "vitskip_env.deploy",
    "EarlyExitViT": "vitskip_env.deploy",
    "SkipExitViT": "vitskip_env.deploy",
    "SkipMergeViT": "vitskip_env.deploy",
    "TokenMergingViT": "vitskip_env.model",
    "ExitRule": "vitskip_env.deploy",
    "ExitHeads": "vitskip_env.model",
    "SkipRules": "vitskip_env.rules",
    "ViTPatchDropEnv": "vitskip_env.env",
    "PatchKeptViT": "vitskip_env.model",
}


def register_envs() -> list[str]:
    """Register every id of :data:`ENV_IDS` and :data:`PATCHDROP_ENV_IDS` not registered yet; returns those registered now."""
    added = []
    for env_id, dataset in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT, kwargs={"dataset": dataset})
        added.append(env_id)
    for env_id, dataset in PATCHDROP_ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=PATCHDROP_ENTRY_POINT, kwargs={"dataset": dataset})
            added.append(env_id)
    return added


def __getattr__(name: str) -> Any:
    """Load a public name from its wing on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vitskip_env' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


register_envs()

__all__ = [
    "ENV_IDS",
    "PATCHDROP_ENV_IDS",
    "PRESETS",
    "CotrainConfig",
    "DynamicViT",
    "EarlyExitViT",
    "ExitHeads",
    "ExitRule",
    "ImageDataset",
    "ObservationEncoder",
    "PatchKeptViT",
    "RewardContext",
    "SkipCore",
    "SkipExitViT",
    "SkipMergeViT",
    "SkipPolicy",
    "SkipRules",
    "SkippableViT",
    "TokenMergingViT",
    "ViTPatchDropEnv",
    "ViTSkipEnv",
    "ViTSkipVectorEnv",
    "available_datasets",
    "load_backbone",
    "make_dataset",
    "register_envs",
    "rows_per_block",
]
