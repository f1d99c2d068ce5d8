"""AgentViT's learner as published: epsilon schedule, mean-rule-preserving actions, value regression."""

from __future__ import annotations

import math

import numpy as np
import torch

from agents.agentvit import AgentViTConfig, AgentViTLearner


def test_epsilon_follows_agentvits_schedule() -> None:
    learner = AgentViTLearner(8)
    assert learner.epsilon == 1.0
    learner.steps = 7_820  # 20 CIFAR-10 epochs of batch 128
    assert learner.epsilon == 0.01 + 0.99 * math.exp(-7_820 / 20_000)
    assert 0.67 < learner.epsilon < 0.69  # still random about 68 % of the time


def test_greedy_action_keeps_what_the_batch_mean_value_keeps() -> None:
    learner = AgentViTLearner(16, AgentViTConfig(eps_start=0.0, eps_end=0.0), seed=1)
    state = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    action = learner.act(state)
    q = learner.q(torch.as_tensor(state)).mean(0).detach().numpy()
    assert action.shape == (16,) and np.abs(action).max() <= 1.0 + 1e-6
    assert np.array_equal(action >= action.mean() - 1e-7, q >= q.mean())


def test_transitions_are_stored_only_when_rewarded_after_the_first_epoch_and_learned_from() -> None:
    learner = AgentViTLearner(4, AgentViTConfig(skip_first=2, minibatch=2), seed=0)
    s = np.ones((3, 4), dtype=np.float32)
    for _ in range(2):
        learner.act(s)
        learner.observe(s, s, 1.0, rewarded=True)  # within the first "epoch": not stored
    learner.act(s)
    learner.observe(s, s, 1.0, rewarded=False)  # no reward this minibatch: not stored
    assert learner.buffer == []
    before = [p.clone() for p in learner.q.parameters()]
    for _ in range(2):
        learner.act(s)
        learner.observe(s, s, 1.0, rewarded=True)
    assert len(learner.buffer) == 2 and learner.updates == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.q.parameters(), strict=True))
