"""Rewards as named components with weights (the knobs NSGA-II searches).

Built-in components, each ``(N,)`` per step:

=============  ===========================================================  ===================
component      value                                                        weight
=============  ===========================================================  ===================
``correct``    1 if the prediction is right, else 0 (last step only)        ``accuracy_weight``
``confidence`` log-probability of the true class, floored at -10 (last)     ``confidence_weight``
``compute``    minus the cost share of the block just executed (0 if        ``compute_weight``
               skipped); cost shares sum to 1 over the blocks (costs.py)
=============  ===========================================================  ===================

The step reward is ``sum(weight * component)``. A custom ``reward_fn(ctx) -> {name: (N,) tensor}``
replaces the built-in components (call :func:`default_components` inside it to extend them); its
components named like the built-ins get the built-in weights, any other name has weight 1.

:meth:`RewardModel.episode` replays whole episodes from how they ended (the executed blocks and the
logits): the same formula for whoever scores episodes outside the env (NSGA-II's joint fitness).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: ``<kwarg name> -> component`` for the built-in weights.
WEIGHT_NAMES: dict[str, str] = {"accuracy_weight": "correct", "confidence_weight": "confidence", "compute_weight": "compute"}
#: ``component -> <kwarg name>`` (error messages name the keyword argument the user passed).
KWARG_OF: dict[str, str] = {component: kwarg for kwarg, component in WEIGHT_NAMES.items()}
#: Defaults: executing every block costs 0.5 in total against 1 for a correct answer, so a block is
#: worth executing when it raises the chance of being right by more than half its cost share.
DEFAULT_WEIGHTS: dict[str, float] = {"correct": 1.0, "confidence": 0.0, "compute": 0.1}
#: Lower bound of the ``confidence`` component (keeps rewards finite for confidently wrong models).
CONFIDENCE_FLOOR = -10.0


@dataclass(frozen=True)
class RewardContext:
    """What a reward function sees after a step (tensors on the env's device).

    Attributes:
        block: Index of the block just decided.
        depth: Number of blocks.
        actions: ``int64 (N,)`` actions after any override (1 = executed).
        costs: ``float32 (depth,)`` cost share of each block (sums to 1).
        executed: ``bool (N, depth)`` blocks executed so far, including this step's.
        terminal: Whether this was the last block (logits are available).
        logits: ``(N, num_classes)`` head output on the last step, else ``None``.
        labels: ``int64 (N,)`` true classes.
    """

    block: int
    depth: int
    actions: torch.Tensor
    costs: torch.Tensor
    executed: torch.Tensor
    terminal: bool
    logits: torch.Tensor | None
    labels: torch.Tensor


RewardFn = Callable[[RewardContext], Mapping[str, torch.Tensor]]


def default_components(ctx: RewardContext) -> dict[str, torch.Tensor]:
    """The built-in ``correct``, ``confidence`` and ``compute`` components (unweighted)."""
    compute = -ctx.costs[ctx.block] * ctx.actions.float()
    if ctx.terminal and ctx.logits is not None:
        logp = F.log_softmax(ctx.logits.float(), dim=1)
        correct = (logp.argmax(1) == ctx.labels).float()
        confidence = logp.gather(1, ctx.labels[:, None]).squeeze(1).clamp(min=CONFIDENCE_FLOOR)
    else:
        correct = torch.zeros_like(compute)
        confidence = torch.zeros_like(compute)
    return {"correct": correct, "confidence": confidence, "compute": compute}


def check_weight(value: Any, name: str) -> float:
    """A reward weight as a finite ``float``: any real number (Python or NumPy int / float scalar).

    Raises:
        ValueError: A bool, a non-number, NaN or an infinity (the message names ``name``).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(
            f"{name} must be a finite number (int, float or a NumPy scalar such as np.float32(0.5)), "
            f"got {type(value).__name__} {value!r}"
        )
    return float(value)


class RewardModel:
    """Weights plus a component function; call it to get the reward and the weighted components.

    Args:
        weights: Weight per built-in component (``{"correct": 1.0, "confidence": 0.0, "compute": 0.5}``).
        reward_fn: Custom component function; ``None`` uses :func:`default_components`.
    """

    def __init__(self, weights: Mapping[str, float], reward_fn: RewardFn | None = None) -> None:
        for name, value in weights.items():
            if name not in DEFAULT_WEIGHTS:
                raise ValueError(f"unknown reward component {name!r}; built-in components: {list(DEFAULT_WEIGHTS)}")
            check_weight(value, KWARG_OF.get(name, f"reward weight for {name!r}"))
        if reward_fn is not None and not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable (ctx -> dict of (N,) tensors), got {type(reward_fn).__name__}")
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in weights.items()}}
        self.reward_fn = reward_fn or default_components
        self.names: tuple[str, ...] | None = None

    def components(self, ctx: RewardContext) -> dict[str, torch.Tensor]:
        """The unweighted components of one step, checked: the same names every step, each a ``(N,)`` tensor.

        Raises:
            ValueError: Other names than on earlier steps, or a component that is not an ``(N,)`` tensor.
        """
        comps = dict(self.reward_fn(ctx))
        n = ctx.actions.shape[0]
        names = tuple(comps)
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise ValueError(f"reward_fn must return the same components each step: {list(names)} != {list(self.names)}")
        for name, value in comps.items():
            if not isinstance(value, torch.Tensor) or value.shape != (n,):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"reward component {name!r} must be a tensor of shape ({n},), got {got}")
        return comps

    def __call__(
        self, ctx: RewardContext, row_weights: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(reward (N,), {name: weighted component (N,)})``; the weighted components sum to the reward.

        ``row_weights``: ``{component: float32 (N,)}`` weights per episode that replace the scalar ones
        (the per-episode compute weight of a budget-conditioned env).
        """
        comps = self.components(ctx)
        rows = row_weights or {}
        # + 0.0: no -0.0 from zero weights
        weighted = {name: rows.get(name, self.weights.get(name, 1.0)) * value.float() + 0.0 for name, value in comps.items()}
        n = ctx.actions.shape[0]
        total = torch.stack(list(weighted.values())).sum(0) if weighted else torch.zeros(n, device=ctx.actions.device)
        return total, weighted

    def episode(
        self, executed: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, costs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The return of whole episodes, replayed from how they ended: ``(float64 (N,), {name: float64 (N,)})``.

        Calls the component function once per block with the contexts the env's steps give it (the
        action is the block's column of ``executed``, ``executed`` holds the blocks up to this one,
        ``logits`` come on the last step), sums each component over the steps and weights the sums, in
        float64: the sum of the env's step rewards, without its float32 rounding.

        Args:
            executed: ``bool (N, depth)`` blocks each episode executed.
            logits: ``(N, num_classes)`` head output at the end of the episodes.
            labels: ``int64 (N,)`` true classes.
            costs: ``(depth,)`` cost share of each block (used as ``float32``, as the env does).
        """
        n, depth = executed.shape
        costs = costs.to(device=executed.device, dtype=torch.float32)
        so_far = torch.zeros_like(executed)
        sums: dict[str, torch.Tensor] = {}
        for i in range(depth):
            so_far[:, i] = executed[:, i]
            last = i == depth - 1
            ctx = RewardContext(i, depth, executed[:, i].long(), costs, so_far, last, logits if last else None, labels)
            for name, value in self.components(ctx).items():
                sums[name] = sums[name] + value.double() if name in sums else value.double()
        weighted = {name: self.weights.get(name, 1.0) * value + 0.0 for name, value in sums.items()}
        total = torch.zeros(n, dtype=torch.float64, device=executed.device)
        for i, value in enumerate(weighted.values()):
            total = value if i == 0 else total + value
        return total, weighted
