"""``SkipCore``: the one batched episode engine behind ``ViTSkipEnv`` (N = 1) and ``ViTSkipVectorEnv``.

It holds N episodes in flight on the device: image indices, labels, token state ``(N, T, D)``, the
block pointer, the executed mask and the cost spent. Every episode is exactly ``depth`` steps, so
the batch stays aligned: the block pointer is one integer, and all N episodes end on the same step.

A step: apply the skip rules (:class:`~vitskip_env.rules.SkipRules`: ``always_execute``,
``min_blocks``) to the actions -> run block ``i`` on the executing rows only (gather / scatter
through ``SkippableViT.run_block``; a block no row executes is not called) -> reward components ->
after the last block, the head and the terminal components -> observation of the next block.
Everything stays on the device; :meth:`SkipCore.to_host` moves one step's results to numpy in a
single transfer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data import ImageDataset
from ..model import SkippableViT, run_executing_rows
from ..observations import ObservationEncoder, budget_feature, executed_fraction
from ..rules import RulesView, SkipContract, SkipRules
from .rewards import RewardContext, RewardModel

if TYPE_CHECKING:  # the core only calls the cotrainer it is given
    from .cotrain import Cotrainer

__all__ = ["CoreStep", "SkipCore"]


@dataclass
class CoreStep:
    """One step of the batch, on the device.

    Attributes:
        obs: ``(N, obs_dim)`` packed observations of the next block (after the last block: the
            final token state with an all-zero block one-hot).
        reward: ``float32 (N,)``.
        components: Weighted reward components ``{name: (N,)}``; they sum to ``reward``.
        overridden: ``bool (N,)`` actions turned from skip into execute by a constraint.
        terminal: Whether the episodes ended with this step (all of them do together).
        final: On the last step: ``label``, ``prediction``, ``correct``, ``confidence`` (softmax
            probability of the predicted class), ``executed_mask``, ``executed_blocks``,
            ``compute_ratio``, ``image_index`` (and ``difficulty`` when the dataset knows it); else ``None``.
        ended: ``bool (N,)`` which episodes ended with this step, for engines whose episodes end at
            different steps (``ExitCore``; ``final`` then holds every row, valid where ``ended``);
            ``None`` here, where all end together (``terminal``).
    """

    obs: torch.Tensor
    reward: torch.Tensor
    components: dict[str, torch.Tensor]
    overridden: torch.Tensor
    terminal: bool
    final: dict[str, torch.Tensor] | None
    ended: torch.Tensor | None = None


class SkipCore(RulesView):
    """N block-skipping episodes in flight on one device.

    Args:
        backbone: The ViT (eval mode; the core never changes its weights, the cotrainer may).
        dataset: The split the images come from, on the backbone's device.
        num_envs: Episodes in flight ``N``.
        encoder: Observation encoder.
        rewards: Reward model.
        costs: ``float32 (depth,)`` cost share per block, summing to 1.
        min_blocks: Every episode executes at least this many blocks (skips that would make it
            impossible are overridden to execute).
        always_execute: Blocks that are never skipped (e.g. ``(0,)``).
        cotrainer: Supervised backbone updates from finished episodes (``None`` = frozen).
        budget_range: ``(lo, hi)``: budget-conditioned episodes; each gets its own compute weight at
            :meth:`start` (drawn by the env), seen in the observation's ``budget`` entry and used by the
            reward in place of the scalar ``compute`` weight. The encoder must have the same range.
    """

    #: Per-row state tensors beside the tokens, labels and masks (what a checkpoint must also keep).
    row_state: tuple[str, ...] = ()

    def __init__(
        self,
        backbone: SkippableViT,
        dataset: ImageDataset,
        num_envs: int,
        encoder: ObservationEncoder,
        rewards: RewardModel,
        costs: torch.Tensor,
        *,
        min_blocks: int = 0,
        always_execute: Iterable[int] = (),
        cotrainer: Cotrainer | None = None,
        budget_range: tuple[float, float] | None = None,
    ) -> None:
        depth = backbone.depth
        if encoder.budget_range != (tuple(budget_range) if budget_range else None):
            raise ValueError(f"the encoder's budget_range {encoder.budget_range} differs from the core's {budget_range}")
        #: The skip rules every action passes through (validated here, before any work).
        self.rules = SkipRules(depth, min_blocks, always_execute)
        self.backbone = backbone
        self.dataset = dataset
        self.num_envs = num_envs
        self.encoder = encoder
        self.rewards = rewards
        self.costs = costs
        self.cotrainer = cotrainer
        self.depth = depth
        self.device = dataset.device
        self.block = 0
        self.image_index = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.labels = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.executed = torch.zeros(num_envs, depth, dtype=torch.bool, device=self.device)
        self.tokens: torch.Tensor | None = None
        self.budget_range = encoder.budget_range
        #: ``float32 (N,)`` compute weight of each episode in flight (budget-conditioned cores only).
        self.compute_weights: torch.Tensor | None = None
        self._budget: torch.Tensor | None = None  # their observation entry, computed once per episode start

    # ------------------------------------------------------------------ episodes
    @torch.inference_mode()
    def start(self, indices: np.ndarray | torch.Tensor, compute_weights: np.ndarray | None = None) -> torch.Tensor:
        """Begin N new episodes on the given images; returns the packed observations of block 0.

        ``compute_weights``: ``(N,)`` each episode's compute weight, inside ``budget_range`` (required by
        budget-conditioned cores, refused by the others).
        """
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.device)
        if idx.shape != (self.num_envs,):
            raise ValueError(f"need {self.num_envs} image indices, got shape {tuple(idx.shape)}")
        self.set_compute_weights(compute_weights)
        self.image_index = idx
        self.labels = self.dataset.labels[idx]
        self.tokens = self.backbone.embed(self.dataset.normalize(self.dataset.images[idx]))
        self.executed = torch.zeros(self.num_envs, self.depth, dtype=torch.bool, device=self.device)
        self.block = 0
        return self.observe()

    def set_compute_weights(self, weights: np.ndarray | None) -> None:
        """Set the ``(N,)`` compute weights of the episodes in flight (budget-conditioned cores; ``None`` otherwise)."""
        if (weights is None) != (self.budget_range is None):
            need = f"needs (N,) compute weights in {self.budget_range}" if self.budget_range else "takes no compute weights"
            raise ValueError(f"this core {need}")
        if weights is not None:
            w = torch.as_tensor(np.asarray(weights, dtype=np.float32)).to(self.device)
            if w.shape != (self.num_envs,):
                raise ValueError(f"need {self.num_envs} compute weights, got shape {tuple(w.shape)}")
            self.compute_weights = w
            self._budget = budget_feature(w, self.budget_range)  # type: ignore[assignment, arg-type]

    def budget(self) -> torch.Tensor | None:
        """``float32 (N,)`` the observation's ``budget`` entry (``None`` for cores that are not budget-conditioned)."""
        return self._budget

    def observe(self) -> torch.Tensor:
        """Packed observations ``(N, obs_dim)`` of the current block."""
        if self.tokens is None:
            raise RuntimeError("no episodes in flight: call start() first")
        return self.encoder.pack(self.tokens, self.block, executed_fraction(self.executed), budget=self.budget())

    @property
    def done(self) -> bool:
        """Whether the episodes in flight have ended (or none was started)."""
        return self.tokens is None or self.block >= self.depth

    # ------------------------------------------------------------------ rules
    def skip_contract(self) -> SkipContract[ObservationEncoder]:
        """The observation encoder and the skip rules: what deployment must share with this engine."""
        return SkipContract(self.encoder, self.rules)

    # ------------------------------------------------------------------ constraints
    def skip_allowed(self) -> torch.Tensor:
        """``bool (N,)``: may each episode skip the current block?"""
        return self.rules.skip_allowed(self.block, self.executed.sum(1))

    def action_masks(self) -> torch.Tensor:
        """``bool (N, 2)``: ``[:, 0]`` skip allowed, ``[:, 1]`` execute allowed (always)."""
        return torch.stack([self.skip_allowed(), torch.ones(self.num_envs, dtype=torch.bool, device=self.device)], 1)

    # ------------------------------------------------------------------ stepping
    def step(self, actions: torch.Tensor) -> CoreStep:
        """Decide the current block for all N episodes.

        Args:
            actions: ``int64 (N,)`` in ``{0, 1}`` on the core's device (validated by the envs).
        """
        if self.done:
            raise RuntimeError("the episodes in flight are over: start new ones (env.reset()) before stepping")
        with torch.inference_mode():
            result = self._step(actions)
        if result.terminal and self.cotrainer is not None:
            self.cotrainer.add(self.image_index, self.executed)
        return result

    def _step(self, actions: torch.Tensor) -> CoreStep:
        i = self.block
        actions, overridden = self.rules.apply(i, self.executed.sum(1), actions)
        execute = actions.bool()
        self.tokens = run_executing_rows(self.backbone, i, self.tokens, execute, inplace=True)
        self.executed[:, i] = execute
        self.block = i + 1
        terminal = self.block == self.depth
        logits = self.backbone.head(self.tokens) if terminal else None
        ctx = RewardContext(i, self.depth, actions, self.costs, self.executed, terminal, logits, self.labels)
        reward, components = self.rewards(ctx, self._row_weights())
        final = self._final(logits) if logits is not None else None
        return CoreStep(self.observe(), reward, components, overridden, terminal, final)

    def _row_weights(self) -> dict[str, torch.Tensor] | None:
        return None if self.compute_weights is None else {"compute": self.compute_weights}

    def _final(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        prediction = logits.argmax(1)  # argmax of the logits, exactly as DynamicViT and the backbone predict
        confidence = logits.float().softmax(1).gather(1, prediction[:, None]).squeeze(1)  # p(predicted class)
        final = {
            "label": self.labels,
            "prediction": prediction,
            "correct": prediction == self.labels,
            "confidence": confidence,
            "executed_mask": self.executed.clone(),
            "executed_blocks": self.executed.sum(1),
            "compute_ratio": self.executed.float() @ self.costs,
            "image_index": self.image_index,
        }
        if self.compute_weights is not None:
            final["compute_weight"] = self.compute_weights.clone()
        if self.dataset.difficulty is not None:
            final["difficulty"] = self.dataset.difficulty[self.image_index]
        return final

    # ------------------------------------------------------------------ host transfer
    @staticmethod
    def to_host(step: CoreStep) -> dict[str, np.ndarray]:
        """Every tensor of a step as numpy, in one device-to-host transfer.

        Returns:
            ``obs`` ``float32 (N, obs_dim)``, ``reward`` ``float32 (N,)``, ``overridden`` ``bool (N,)``,
            ``ended`` ``bool (N,)`` (engines with ``CoreStep.ended``),
            ``components/<name>`` ``float32 (N,)`` and, on the last step, ``final/<name>`` with
            integer fields as ``int64`` and flags and masks as ``bool``.
        """
        named: dict[str, torch.Tensor] = {"obs": step.obs, "reward": step.reward, "overridden": step.overridden}
        if step.ended is not None:
            named["ended"] = step.ended
        named |= {f"components/{k}": v for k, v in step.components.items()}
        if step.final is not None:
            named |= {f"final/{k}": v for k, v in step.final.items()}
        n = step.obs.shape[0]
        # Values are small integers (< 2**24), 0/1 flags or float32, so one float32 buffer is exact.
        cols = [t.reshape(n, -1).to(torch.float32) for t in named.values()]
        host = torch.cat(cols, 1).cpu().numpy()
        out, start = {}, 0
        for (key, tensor), col in zip(named.items(), cols, strict=True):
            block = host[:, start : start + col.shape[1]]
            start += col.shape[1]
            if tensor.dtype == torch.bool:
                value = block.astype(bool)
            elif not tensor.dtype.is_floating_point:
                value = block.astype(np.int64)
            else:
                value = block
            out[key] = value.reshape(n, *tensor.shape[1:]) if tensor.ndim > 1 else value.reshape(n)
        return out
