"""Frozen backbones never change; co-trained ones learn from the paths the agent takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitskip_env import CotrainConfig, ViTSkipVectorEnv, make_dataset
from vitskip_env.measure import random_skip_top1


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_backbone_is_bit_identical_after_10k_steps(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(128, **micro_kwargs)
    before = snapshot(venv.backbone)
    rng = np.random.default_rng(0)
    venv.reset(seed=0)
    for _ in range(80):  # 128 envs x 80 steps = 10,240 env steps (2,048 episodes, autoreset steps included)
        venv.step(rng.integers(0, 2, size=128))
    after = venv.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not venv.backbone.training and venv.core.cotrainer is None


def test_cotrain_improves_top1_under_a_fixed_random_skip_policy(micro_kwargs: dict) -> None:
    pytest.importorskip("sklearn")  # digits: a real dataset a 4-block model learns in seconds (shapes needs minutes)
    kwargs = {**micro_kwargs, "dataset": "digits", "split": "train", "num_images": None}
    n = 128
    venv = ViTSkipVectorEnv(n, **kwargs, backbone_mode="cotrain", cotrain={"every": n, "lr": 3e-3})
    vit = venv.backbone
    test = make_dataset("digits", "test")
    before_top1 = random_skip_top1(vit, test, 0.5, seed=0)
    before = snapshot(vit)
    rng = np.random.default_rng(0)
    venv.reset(seed=0)
    batches = 8 * len(venv.dataset) // n  # about 8 epochs of the 1,437 training digits
    for _ in range(batches * 5):  # 4 decisions per episode + the autoreset step
        venv.step(rng.integers(0, 2, size=n))  # the fixed policy: execute each block with probability 1/2
    trainer = venv.core.cotrainer
    assert trainer is not None and trainer.steps == batches
    assert any(not torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert not vit.training  # rollouts run in eval mode between the supervised steps
    after_top1 = random_skip_top1(vit, test, 0.5, seed=0)
    assert after_top1 > before_top1 + 10, (before_top1, after_top1)  # measured 11.7 -> 31.1


def test_cotrain_steps_every_k_episodes_with_the_recorded_masks(micro_kwargs: dict) -> None:
    venv = ViTSkipVectorEnv(6, **micro_kwargs, backbone_mode="cotrain", cotrain=CotrainConfig(every=4, lr=1e-3))
    trainer = venv.core.cotrainer
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_update = trainer._update
    trainer._update = lambda idx, mask: (batches.append((idx, mask)), real_update(idx, mask))  # type: ignore[method-assign]
    venv.reset(seed=0)
    plan = np.array([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]])
    for i in range(4):
        venv.step(plan[:, i])
    assert trainer.steps == 1 and len(batches) == 1  # 6 finished episodes: one step of 4, 2 carried over
    idx, mask = batches[0]
    assert mask.tolist() == plan[:4].astype(bool).tolist()
    assert idx.tolist() == venv.core.image_index[:4].tolist()
    venv.step(np.ones(6, dtype=np.int64))  # NEXT_STEP autoreset
    for _ in range(4):
        venv.step(np.ones(6, dtype=np.int64))
    assert trainer.steps == 3 and trainer.last_loss is not None  # 2 carried + 6 new = two more steps
