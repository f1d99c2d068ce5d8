"""AgentViT's learner, as its public code does it, for ``ViTPatchDrop-*`` with ``mode="agentvit"``.

A per-image network maps the state (the first attention block's output per patch) to one value per
patch; the values are averaged over the batch and a patch is kept where its value is at least the
mean (the env applies that rule to the action). Exploration is epsilon-greedy with
``eps = 0.01 + 0.99 * exp(-t / 20000)`` (a uniform random score vector). Transitions
``(state, next_state, reward)`` are stored when a reward arrives (every 10 minibatches), not during
the first epoch, in a 64-transition buffer with random eviction; each stored transition triggers one
update on 8 of them: ``SmoothL1(Q(s), r + gamma * Q_target(s'))`` over **all** outputs (no action is
stored and there is no max: a per-patch value regression, not a DQN target), AdamW (lr 0.01,
amsgrad), gradient clip 100, soft target update (tau 0.1) every 2 updates, gamma 0.95.

This reproduces what was published so that it can be measured; it is not a recommendation. In a
short run epsilon stays near 1, so the mask is close to random ~50 % patch dropout.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class AgentViTConfig:
    """The learner's settings (AgentViT's values by default)."""

    hidden: int = 128
    """width of the per-image value network (not stated in the code read; an assumption)"""
    lr: float = 0.01
    gamma: float = 0.95
    tau: float = 0.1
    update_every: int = 2
    buffer: int = 64
    minibatch: int = 8
    grad_clip: float = 100.0
    eps_start: float = 1.0
    eps_end: float = 0.01
    eps_decay: float = 20_000.0
    skip_first: int = 0
    """minibatches at the start whose transitions are not stored (AgentViT: one epoch)"""


class AgentViTLearner:
    """Acts on and learns from ``ViTPatchDrop-*(mode="agentvit")`` one minibatch at a time."""

    def __init__(self, num_patches: int, config: AgentViTConfig | None = None, seed: int = 0) -> None:
        self.config = config or AgentViTConfig()
        torch.manual_seed(seed)
        c = self.config
        self.q = nn.Sequential(nn.Linear(num_patches, c.hidden), nn.ReLU(), nn.Linear(c.hidden, num_patches))
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.q.parameters(), lr=c.lr, amsgrad=True)
        self.rng = np.random.default_rng(seed)
        self.buffer: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self.steps = 0
        self.updates = 0
        self.explored = 0

    @property
    def epsilon(self) -> float:
        """The exploration rate at the current step."""
        c = self.config
        return c.eps_end + (c.eps_start - c.eps_end) * math.exp(-self.steps / c.eps_decay)

    @torch.no_grad()
    def act(self, state: np.ndarray) -> np.ndarray:
        """One score per patch in ``[-1, 1]`` for the batch ``state`` ``(B, P)``."""
        self.steps += 1
        if self.rng.random() < self.epsilon:
            self.explored += 1
            scores = self.rng.random(state.shape[1])
        else:
            scores = self.q(torch.as_tensor(state, dtype=torch.float32)).mean(dim=0).numpy()
        centred = scores - scores.mean()
        scale = float(np.abs(centred).max())
        # a positive affine map keeps "score >= mean" decisions exactly as they were
        return (centred / scale if scale > 0 else centred).astype(np.float32)

    def observe(self, state: np.ndarray, next_state: np.ndarray, reward: float, rewarded: bool) -> None:
        """Store the transition when the env paid a reward (and the first epoch is over), then learn."""
        if not rewarded or self.steps <= self.config.skip_first:
            return
        item = (torch.as_tensor(state, dtype=torch.float32), torch.as_tensor(next_state, dtype=torch.float32), float(reward))
        if len(self.buffer) >= self.config.buffer:
            self.buffer[int(self.rng.integers(len(self.buffer)))] = item
        else:
            self.buffer.append(item)
        if len(self.buffer) >= self.config.minibatch:
            self._update()

    def _update(self) -> None:
        c = self.config
        picks = self.rng.choice(len(self.buffer), size=c.minibatch, replace=False)
        states = torch.stack([self.buffer[i][0] for i in picks])
        nexts = torch.stack([self.buffer[i][1] for i in picks])
        rewards = torch.tensor([self.buffer[i][2] for i in picks]).view(-1, 1, 1)
        with torch.no_grad():
            target = rewards + c.gamma * self.target(nexts)
        loss = nn.functional.smooth_l1_loss(self.q(states), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_value_(self.q.parameters(), c.grad_clip)
        self.opt.step()
        self.updates += 1
        if self.updates % c.update_every == 0:
            with torch.no_grad():
                for t, p in zip(self.target.parameters(), self.q.parameters(), strict=True):
                    t.mul_(1.0 - c.tau).add_(p, alpha=c.tau)
