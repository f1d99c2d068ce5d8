"""``ExitCore``: the batched engine of ``actions="skip_exit"`` (skip / execute / exit), episodes of any length.

It extends :class:`~vitskip_env.env.core.SkipCore` with exit heads. Every row has its own block
pointer, because an episode ends at once when its agent exits; the other rows go on and the vector
env restarts the finished ones on new images. A step, for the rows asked to step:

1. ``exit`` (action 2) where the row has just passed an exit head (and has executed ``min_blocks``):
   the episode ends with that head's prediction; no further work for the row. Elsewhere ``exit``
   is not allowed and is turned into ``execute`` (``action_overridden``), as a forbidden skip is.
2. The other rows skip or execute the block they are at, after the skip rules. Rows at the same
   block run it together (gather / scatter through ``run_executing_rows``); a block no row
   executes is not called. So one step calls each block at most once, on the rows that execute it.
3. A row that has now passed the last block ends with the backbone's classifier; a row that has
   passed a block with an exit head runs that head (grouped by head, rows in flight only) and its
   next observation carries the head's confidence features (:func:`~vitskip_env.observations.exit_features`).

Reward components are the built-in ones: ``compute`` is minus the cost share of the executed block
**plus the cost share of the exit head run after it** (head FLOPs over the blocks' FLOPs), so an
agent pays for every head it reads; ``correct`` and ``confidence`` come when the episode ends, from
the exit head's or the final classifier's logits.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ..data import ImageDataset
from ..model import SkippableViT, run_executing_rows
from ..model.exits import ExitHeads
from ..observations import EXIT_FEATURES, NO_EXIT, ObservationEncoder, executed_fraction, exit_features
from .core import CoreStep, SkipCore
from .rewards import CONFIDENCE_FLOOR, RewardModel, default_components

__all__ = ["EXIT", "ExitCore", "head_cost_shares"]

#: The exit action.
EXIT = 2


def head_cost_shares(heads: ExitHeads, backbone: SkippableViT) -> torch.Tensor:
    """``float32 (n_heads,)``: each exit head's FLOPs over the FLOPs of all blocks (the unit of the block cost shares)."""
    blocks = float(sum(backbone.block_flops()))
    return torch.tensor([f / blocks for f in heads.head_flops(backbone)], dtype=torch.float32)


class ExitCore(SkipCore):
    """N skip / execute / exit episodes in flight on one device (see the module docstring).

    Args:
        backbone, dataset, num_envs, encoder, rewards, costs, min_blocks, always_execute: As
            :class:`~vitskip_env.env.core.SkipCore` (``encoder`` built with ``exit_features=True``).
        heads: The exit heads of ``backbone``.
        head_costs: ``float32 (n_heads,)`` cost share of each head (:func:`head_cost_shares`).
    """

    row_state = ("blocks", "at_exit", "head_logits", "previous", "run", "exit_obs", "spent")

    def __init__(
        self,
        backbone: SkippableViT,
        dataset: ImageDataset,
        num_envs: int,
        encoder: ObservationEncoder,
        rewards: RewardModel,
        costs: torch.Tensor,
        heads: ExitHeads,
        head_costs: torch.Tensor,
        *,
        min_blocks: int = 0,
        always_execute: Iterable[int] = (),
    ) -> None:
        if not encoder.exit_features:
            raise ValueError("ExitCore needs an observation encoder with exit_features=True")
        if rewards.reward_fn is not default_components:
            raise ValueError(
                "reward_fn is not supported with actions='skip_exit' (its episodes end at different blocks); "
                "use the built-in components (accuracy_weight, confidence_weight, compute_weight)"
            )
        super().__init__(
            backbone, dataset, num_envs, encoder, rewards, costs, min_blocks=min_blocks, always_execute=always_execute
        )
        self.heads = heads
        self.head_costs = head_costs.to(self.device)
        n, dev = num_envs, self.device
        #: Exit index of the head after each block (``-1``: none), ``int64 (depth,)``.
        self.head_at = torch.full((self.depth,), -1, dtype=torch.long, device=dev)
        for k, p in enumerate(heads.positions):
            self.head_at[p] = k
        self.n_points = len(heads) + 1
        self.blocks = torch.zeros(n, dtype=torch.long, device=dev)  # block each row is about to decide
        self.at_exit = torch.zeros(n, dtype=torch.bool, device=dev)  # the row just passed an exit head
        self.head_logits = torch.zeros(n, backbone.num_classes, device=dev)
        self.previous = torch.full((n,), -1, dtype=torch.long, device=dev)  # last head's argmax
        self.run = torch.zeros(n, dtype=torch.long, device=dev)  # exits in a row with that argmax
        self.exit_obs = torch.full((n, len(EXIT_FEATURES)), NO_EXIT, device=dev)
        self.spent = torch.zeros(n, device=dev)  # cost shares spent (blocks and heads)

    # ------------------------------------------------------------------ episodes
    @torch.inference_mode()
    def start(self, indices: np.ndarray | torch.Tensor, compute_weights: np.ndarray | None = None) -> torch.Tensor:
        """Begin N new episodes on the given images; returns the packed observations of block 0.

        ``compute_weights`` must be ``None``: exit episodes are not budget-conditioned (refused by the env options).
        """
        self.set_compute_weights(compute_weights)
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.device)
        if idx.shape != (self.num_envs,):
            raise ValueError(f"need {self.num_envs} image indices, got shape {tuple(idx.shape)}")
        self.tokens = None
        return self.start_rows(torch.arange(self.num_envs, device=self.device), idx)

    @torch.inference_mode()
    def start_rows(self, rows: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Begin new episodes in ``rows`` only (the others go on); returns every row's packed observation."""
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.device)
        tokens = self.backbone.embed(self.dataset.normalize(self.dataset.images[idx]))
        if self.tokens is None:
            self.tokens = tokens
            self.image_index, self.labels = idx.clone(), self.dataset.labels[idx]
        else:
            self.tokens[rows] = tokens
            self.image_index[rows], self.labels[rows] = idx, self.dataset.labels[idx]
        self.executed[rows] = False
        self.blocks[rows] = 0
        self.at_exit[rows] = False
        self.previous[rows], self.run[rows], self.spent[rows] = -1, 0, 0.0
        self.exit_obs[rows] = NO_EXIT
        self.block = 0
        return self.observe()

    def observe(self) -> torch.Tensor:
        """Packed observations ``(N, obs_dim)``, each row at its own block."""
        if self.tokens is None:
            raise RuntimeError("no episodes in flight: call start() first")
        return self.encoder.pack(self.tokens, self.blocks, executed_fraction(self.executed), self.exit_obs)

    @property
    def done(self) -> bool:
        """Whether no episode was started (rows restart one by one; see ``ViTSkipVectorEnv``)."""
        return self.tokens is None

    # ------------------------------------------------------------------ constraints
    def exit_allowed(self) -> torch.Tensor:
        """``bool (N,)``: may each row exit now (it just passed an exit head and ran ``min_blocks``)?"""
        return self.at_exit & (self.executed.sum(1) >= self.rules.min_blocks)

    def skip_allowed(self) -> torch.Tensor:
        """``bool (N,)``: may each row skip the block it is at?"""
        return ~self.rules.forced_rows(self.blocks, self.executed.sum(1))

    def action_masks(self) -> torch.Tensor:
        """``bool (N, 3)``: skip, execute (always) and exit allowed."""
        ones = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return torch.stack([self.skip_allowed(), ones, self.exit_allowed()], 1)

    # ------------------------------------------------------------------ stepping
    def step(self, actions: torch.Tensor, rows: torch.Tensor | None = None) -> CoreStep:
        """Decide, for the rows in ``rows`` (``bool (N,)``, default all), skip (0), execute (1) or exit (2).

        Rows outside ``rows`` are left as they are (zero reward, not ended). ``CoreStep.ended``
        tells which episodes ended; ``CoreStep.final`` holds every row, valid where ``ended``.
        """
        if self.tokens is None:
            raise RuntimeError("no episodes in flight: start new ones (env.reset()) before stepping")
        active = torch.ones(self.num_envs, dtype=torch.bool, device=self.device) if rows is None else rows
        with torch.inference_mode():
            return self._step_rows(actions, active)

    def _step_rows(self, actions: torch.Tensor, active: torch.Tensor) -> CoreStep:
        count = self.executed.sum(1)
        wants_exit = active & (actions == EXIT)
        exiting = wants_exit & self.exit_allowed()
        deciding = active & ~exiting
        forced = self.rules.forced_rows(self.blocks, count)
        overridden = deciding & (((actions == 0) & forced) | (actions == EXIT))
        execute = deciding & ((actions != 0) | forced)
        blocks = self.blocks
        compute = torch.zeros(self.num_envs, device=self.device)
        if bool(execute.any()):
            for b in torch.unique(blocks[execute]).tolist():
                self.tokens = run_executing_rows(self.backbone, b, self.tokens, execute & (blocks == b), inplace=True)
            rows = execute.nonzero().squeeze(1)
            self.executed[rows, blocks[rows]] = True
            compute[rows] = self.costs[blocks[rows]]
        self.blocks = blocks = blocks + deciding.long()
        finished = deciding & (blocks == self.depth)
        passed = blocks.clamp(min=1) - 1  # the block each row has just passed
        heads_now = deciding & ~finished & (self.head_at[passed] >= 0)
        self.at_exit = (self.at_exit & ~active) | heads_now
        self.exit_obs[deciding & ~heads_now] = NO_EXIT
        if bool(heads_now.any()):
            compute += self._run_heads(heads_now, self.head_at[passed])
        self.spent += compute
        ended = exiting | finished
        logits = self.head_logits.clone()
        if bool(finished.any()):
            rows = finished.nonzero().squeeze(1)
            logits[rows] = self.backbone.head(self.tokens[rows]).float()
        reward, components = self._rewards(compute, ended, logits)
        final = self._final_rows(logits, exiting)
        self.at_exit &= ~ended
        return CoreStep(self.observe(), reward, components, overridden, bool(ended.all()), final, ended)

    def _run_heads(self, rows_mask: torch.Tensor, head_index: torch.Tensor) -> torch.Tensor:
        """Run the exit head each row has just passed; update its exit features; return each row's head cost."""
        cost = torch.zeros(self.num_envs, device=self.device)
        for k in torch.unique(head_index[rows_mask]).tolist():
            rows = (rows_mask & (head_index == k)).nonzero().squeeze(1)
            logits = self.heads.logits(k, self.tokens[rows], self.backbone).float()
            pred = logits.argmax(1)
            run = torch.where(pred == self.previous[rows], self.run[rows] + 1, torch.ones_like(pred))
            self.previous[rows], self.run[rows] = pred, run
            self.head_logits[rows] = logits
            self.exit_obs[rows] = exit_features(logits, run, self.n_points)
            cost[rows] = self.head_costs[k]
        return cost

    def _rewards(
        self, compute: torch.Tensor, ended: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp = torch.log_softmax(logits, 1)
        correct = ((logp.argmax(1) == self.labels) & ended).float()
        confidence = torch.where(ended, logp.gather(1, self.labels[:, None]).squeeze(1).clamp(min=CONFIDENCE_FLOOR), 0.0)
        comps = {"correct": correct, "confidence": confidence, "compute": -compute}
        w = self.rewards.weights
        weighted = {name: w[name] * value + 0.0 for name, value in comps.items()}
        return torch.stack(list(weighted.values())).sum(0), weighted

    def _final_rows(self, logits: torch.Tensor, exiting: torch.Tensor) -> dict[str, torch.Tensor]:
        final = self._final(logits)
        final["compute_ratio"] = self.spent.clone()
        exit_block = torch.where(exiting, self.blocks, torch.full_like(self.blocks, self.depth))
        final["exit_block"] = exit_block
        return final
