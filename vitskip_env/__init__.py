"""vitskip environments: learn, per image, which Vision Transformer blocks to skip.

Importing the package registers the Gymnasium ids (idempotently; Gymnasium 1.x ignores entry-point
plugins, so registration happens on import).
"""

import importlib.util

import gymnasium as gym

from .backbone import SkippableViT, load_backbone, rows_per_block
from .core import SkipCore
from .cotrain import CotrainConfig
from .data import ImageDataset, available_datasets, make_dataset
from .dynamic import DynamicViT
from .env import ViTSkipEnv
from .observations import ObservationEncoder
from .policy import SkipPolicy
from .presets import PRESETS
from .rewards import RewardContext
from .vector_env import ViTSkipVectorEnv

#: Registered id -> dataset name (ids differ only in ``kwargs``).
ENV_IDS: dict[str, str] = {
    "ViTSkip-Shapes-v0": "shapes",
    "ViTSkip-CIFAR10-v0": "cifar10",
    "ViTSkip-CIFAR100-v0": "cifar100",
    "ViTSkip-TinyImageNet-v0": "tinyimagenet",
}
if importlib.util.find_spec("sklearn") is not None:
    ENV_IDS["ViTSkip-Digits-v0"] = "digits"


def register_envs() -> list[str]:
    """Register every id in :data:`ENV_IDS` that is not registered yet; returns the ids registered now."""
    added = []
    for env_id, dataset in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="vitskip_env.env:ViTSkipEnv",
            vector_entry_point="vitskip_env.vector_env:ViTSkipVectorEnv",
            kwargs={"dataset": dataset},
        )
        added.append(env_id)
    return added


register_envs()

__all__ = [
    "ENV_IDS",
    "PRESETS",
    "CotrainConfig",
    "DynamicViT",
    "ImageDataset",
    "ObservationEncoder",
    "RewardContext",
    "SkipCore",
    "SkipPolicy",
    "SkippableViT",
    "ViTSkipEnv",
    "ViTSkipVectorEnv",
    "available_datasets",
    "load_backbone",
    "make_dataset",
    "register_envs",
    "rows_per_block",
]
__version__ = "0.1.0"
