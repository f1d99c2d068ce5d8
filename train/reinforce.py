"""Learn to skip ViT blocks with REINFORCE and a learned per-block baseline (agents/reinforce.py, plain PyTorch).

    python train/reinforce.py                                  # ViTSkip-Shapes-v0, shipped demo backbone, offline
    python train/reinforce.py --env ViTSkip-CIFAR100-v0 --data-root ~/data --backbone runs/bb.safetensors
    python train/reinforce.py --resume runs/<run>              # continue an interrupted run, nothing lost

Writes a run directory under `runs/` (see train/rl.py) and prints its summary.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro
from rl import RLArgs, main


@dataclass
class Args(RLArgs):
    algo: str = "reinforce"
    """agent: ppo, a2c, maskable_ppo, recurrent_ppo, trpo, qrdqn, reinforce, or module:Class"""


if __name__ == "__main__":
    main(tyro.cli(Args))
