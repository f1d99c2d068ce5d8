"""The environment wing: the batched engine (``SkipCore``), the single and vector Gymnasium envs,
their options (declared once in ``EnvOptions``), infos, rewards, image sampling, co-training and
rendering. Built on the model and data wings and the observation contract; deploy never imports it.
"""

from __future__ import annotations

from .core import SkipCore
from .cotrain import CotrainConfig, Cotrainer
from .options import EnvOptions, option_defaults, option_names
from .rewards import RewardContext, RewardModel
from .sampling import ImageSampler
from .single_env import ViTSkipEnv
from .vector_env import ViTSkipVectorEnv

__all__ = [
    "CotrainConfig",
    "Cotrainer",
    "EnvOptions",
    "ImageSampler",
    "RewardContext",
    "RewardModel",
    "SkipCore",
    "ViTSkipEnv",
    "ViTSkipVectorEnv",
    "option_defaults",
    "option_names",
]
