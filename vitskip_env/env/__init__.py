"""The environment wing: the batched engine (``SkipCore``), the single and vector Gymnasium envs,
their options (declared once in ``EnvOptions``), infos, rewards, image sampling, co-training and
rendering; and the patch-dropping training envs (``ViTPatchDropEnv`` on ``TrainingRun``). Built on the
model and data wings and the observation contract; deploy never imports it.
"""

from __future__ import annotations

from .core import SkipCore
from .cotrain import CotrainConfig, Cotrainer
from .options import EnvOptions, option_defaults, option_names
from .patchdrop_env import KEEP_RATIOS, OBS_FEATURES, ViTPatchDropEnv, agentvit_reward
from .patchdrop_run import RunConfig, TrainingRun
from .rewards import RewardContext, RewardModel
from .sampling import ImageSampler
from .single_env import ViTSkipEnv
from .vector_env import ViTSkipVectorEnv

__all__ = [
    "KEEP_RATIOS",
    "OBS_FEATURES",
    "CotrainConfig",
    "Cotrainer",
    "EnvOptions",
    "ImageSampler",
    "RewardContext",
    "RewardModel",
    "RunConfig",
    "SkipCore",
    "TrainingRun",
    "ViTPatchDropEnv",
    "ViTSkipEnv",
    "ViTSkipVectorEnv",
    "agentvit_reward",
    "option_defaults",
    "option_names",
]
