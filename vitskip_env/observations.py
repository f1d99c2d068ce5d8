"""Observation encoders: torch functions from the token state to what the agent sees.

The environments and ``DynamicViT`` call the same :class:`ObservationEncoder`, so a deployed policy
sees exactly what it saw in training. Every mode shares two entries:

* ``block``: one-hot index ``(depth,)`` of the block about to be decided (all zeros once the
  episode is over: there is no next block);
* ``executed_frac``: ``(1,)`` blocks executed so far divided by ``depth``, in ``[0, 1]``
  (:func:`executed_fraction` of the executed mask).

and adds the token features:

* ``flat`` (default): one float32 vector ``[token (D) | block (depth) | executed_frac (1)]``;
* ``dict``: the same three pieces as named entries ``token``, ``block``, ``executed_frac``;
* ``tokens``: the full ``(T, D)`` token state as ``tokens`` (for attention-based extractors).

With exit heads (``actions="skip_exit"``, ``exit_features=True``) every mode adds ``exit`` ``(5,)``,
what a threshold rule reads, so that a policy can be at least as good as one
(:func:`exit_features`): ``[exit allowed, max softmax probability, entropy / log(C), top-2
probability margin, patience run / exit points]`` of the exit head the episode just passed, each
mapped from ``[0, 1]`` to ``[-1, 1]`` (all ``-1`` where it passed none: :data:`NO_EXIT`). The
``[-1, 1]`` range also tells the entry apart in a flat Box: token entries reach below ``-1``,
block and executed fraction stay in ``[0, 1]``.

A budget-conditioned env (``compute_weight_range=(lo, hi)``, ``budget_range`` of the encoder) adds
``budget`` ``(1,)`` after ``executed_frac`` (before ``exit``): the episode's compute weight ``w`` as
its position on a log scale, ``2 * log(w / lo) / log(hi / lo) - 1`` in ``[-1, 1]``
(:func:`budget_feature`). Deployed, it is the model's compute knob (``DynamicViT.set_budget``).

``token`` is the class token, or the mean of the patch tokens for models without one
(``global_pool="avg"`` ViTs). Token features are standardised per token with a parameter-free
layer norm (zero mean, unit variance over ``D``; no learned scale, so it never changes when the
backbone is co-trained). That makes the scale the same for every backbone, and it gives an exact
finite bound: a standardised vector of length ``D`` has no entry beyond ``sqrt(D - 1)``, so the
observation Box is ``[-sqrt(D), sqrt(D)]`` and values can never leave it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

ObsMode = Literal["flat", "dict", "tokens"]
OBS_MODES: tuple[str, ...] = ("flat", "dict", "tokens")
Pool = Literal["cls", "mean"]
#: The entries of the ``exit`` observation, in order.
EXIT_FEATURES: tuple[str, ...] = ("exit_allowed", "max_prob", "entropy", "margin", "patience")


def exit_features(logits: torch.Tensor, run: torch.Tensor, n_points: int) -> torch.Tensor:
    """``float32 (N, 5)`` in ``[-1, 1]``: the ``exit`` observation of rows whose exit head gave ``logits`` (``(N, C)``).

    Args:
        logits: The exit head's logits.
        run: ``(N,)`` exits in a row (this one included) with the same prediction (the patience count).
        n_points: Exit points of the model (heads + the final classifier), to scale ``run`` into ``[0, 1]``.
    """
    probs = torch.softmax(logits.float(), -1)
    top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
    margin = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)
    ent = -(probs * torch.log_softmax(logits.float(), -1)).sum(1) / math.log(max(logits.shape[1], 2))
    cols = [torch.ones_like(margin), top2[:, 0], ent, margin, run.float() / n_points]
    return torch.stack(cols, 1).clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)


def exit_features_host(logits: np.ndarray, run: np.ndarray, n_points: int) -> np.ndarray:
    """:func:`exit_features` in NumPy (float32, for a few CPU images); equal to it up to float rounding.

    Callers that need the exact torch values (``SkipExitViT`` where a decision is within rounding
    of a tie) recompute them with :func:`exit_features`.
    """
    x = logits.astype(np.float32, copy=False)
    shifted = x - x.max(1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(1, keepdims=True))
    logp = shifted - log_z
    probs = np.exp(logp)
    if probs.shape[1] > 1:
        top2 = -np.partition(-probs, 1, axis=1)[:, :2]
        first, margin = top2[:, 0], top2[:, 0] - top2[:, 1]
    else:
        first = margin = probs[:, 0]
    ent = -(probs * logp).sum(1) / np.float32(math.log(max(x.shape[1], 2)))
    cols = np.stack([np.ones_like(margin), first, ent, margin, run.astype(np.float32) / n_points], 1)
    return (np.clip(cols, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


#: The ``exit`` entry of a row that has no exit head to leave through (before the first exit point).
NO_EXIT = -1.0


def budget_feature(weight: float | torch.Tensor, budget_range: tuple[float, float]) -> float | torch.Tensor:
    """The ``budget`` entry of compute weight(s) ``weight``: log-scale position in ``budget_range``, in ``[-1, 1]``.

    Raises:
        ValueError: A Python float outside the range (tensors are clamped: the env draws inside it).
    """
    lo, hi = budget_range
    if isinstance(weight, torch.Tensor):
        return (2 * torch.log(weight / lo) / math.log(hi / lo) - 1).clamp(-1.0, 1.0).float()
    if not lo <= weight <= hi:
        raise ValueError(f"compute weight {weight!r} is outside the range the policy was trained on, [{lo}, {hi}]")
    return min(1.0, max(-1.0, 2 * math.log(weight / lo) / math.log(hi / lo) - 1))


def executed_fraction(executed: torch.Tensor) -> torch.Tensor:
    """``float32 (N,)``: blocks executed so far / depth, from the ``bool (N, depth)`` executed mask (``executed_frac``)."""
    return executed.sum(1, dtype=torch.float32) / executed.shape[1]


def standardize(x: torch.Tensor, bound: float) -> torch.Tensor:
    """Parameter-free layer norm over the last dimension, clamped to ``[-bound, bound]`` (rounding guard)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=1e-5).clamp_(-bound, bound)


class ObservationEncoder:
    """``encode(tokens, block_idx, executed_frac)`` for one observation mode.

    Args:
        mode: ``"flat"``, ``"dict"`` or ``"tokens"`` (see the module docstring).
        depth: Number of blocks ``L``.
        num_tokens: Tokens per image ``T``.
        embed_dim: Token width ``D``.
        pool: ``"cls"`` (token 0) or ``"mean"`` (mean of the tokens after the ``num_prefix_tokens``).
        num_prefix_tokens: Class / register tokens in front of the patches (used by ``"mean"``).
        exit_features: Add the ``exit`` entry (:data:`EXIT_FEATURES`; envs with ``actions="skip_exit"``).
        budget_range: ``(lo, hi)`` compute weights of a budget-conditioned env: adds the ``budget`` entry.

    Example:
        >>> enc = ObservationEncoder("flat", depth=4, num_tokens=17, embed_dim=32)
        >>> enc(torch.randn(2, 17, 32), 1, torch.tensor([0.25, 0.0])).shape
        torch.Size([2, 37])
    """

    def __init__(
        self,
        mode: ObsMode,
        *,
        depth: int,
        num_tokens: int,
        embed_dim: int,
        pool: Pool = "cls",
        num_prefix_tokens: int = 1,
        exit_features: bool = False,
        budget_range: tuple[float, float] | None = None,
    ) -> None:
        if mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {list(OBS_MODES)}, got {mode!r}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.mode = mode
        self.depth = depth
        self.num_tokens = num_tokens
        self.embed_dim = embed_dim
        self.pool = pool
        self.num_prefix_tokens = num_prefix_tokens
        self.exit_features = bool(exit_features)
        if budget_range is not None:
            lo, hi = (float(v) for v in budget_range)
            if not 0 < lo < hi or not math.isfinite(hi):
                raise ValueError(f"budget_range must be two compute weights 0 < lo < hi, got {budget_range!r}")
            budget_range = (lo, hi)
        self.budget_range: tuple[float, float] | None = budget_range
        self.bound = float(np.float32(math.sqrt(embed_dim)))
        self._eye: torch.Tensor | None = None

    def config(self) -> dict[str, Any]:
        """The constructor arguments as JSON-serialisable values (``ObservationEncoder(**enc.config())`` rebuilds it)."""
        return {
            "mode": self.mode,
            "depth": self.depth,
            "num_tokens": self.num_tokens,
            "embed_dim": self.embed_dim,
            "pool": self.pool,
            "num_prefix_tokens": self.num_prefix_tokens,
            **({"exit_features": True} if self.exit_features else {}),
            **({"budget_range": list(self.budget_range)} if self.budget_range else {}),
        }

    @property
    def parts(self) -> dict[str, tuple[int, ...]]:
        """Named pieces of one observation and their shapes, in packing order."""
        feat = {"tokens": (self.num_tokens, self.embed_dim)} if self.mode == "tokens" else {"token": (self.embed_dim,)}
        exits = {"exit": (len(EXIT_FEATURES),)} if self.exit_features else {}
        budget = {"budget": (1,)} if self.budget_range else {}
        return {**feat, "block": (self.depth,), "executed_frac": (1,), **budget, **exits}

    @property
    def obs_dim(self) -> int:
        """Length of one packed observation (the flat vector's length in ``"flat"`` mode)."""
        return sum(math.prod(shape) for shape in self.parts.values())

    def space(self) -> spaces.Space:
        """The Gymnasium observation space of one environment."""
        bounds = {"token": (-self.bound, self.bound), "tokens": (-self.bound, self.bound)}
        bounds |= {"block": (0.0, 1.0), "executed_frac": (0.0, 1.0), "budget": (-1.0, 1.0), "exit": (-1.0, 1.0)}
        if self.mode == "flat":
            low = np.concatenate([np.full(math.prod(s), bounds[k][0], np.float32) for k, s in self.parts.items()])
            high = np.concatenate([np.full(math.prod(s), bounds[k][1], np.float32) for k, s in self.parts.items()])
            return spaces.Box(low, high, dtype=np.float32)
        boxes = {}
        for key, shape in self.parts.items():
            low, high = bounds[key]
            boxes[key] = spaces.Box(np.float32(low), np.float32(high), shape, dtype=np.float32)
        return spaces.Dict(boxes)

    def pack(
        self,
        tokens: torch.Tensor,
        block_idx: int | torch.Tensor,
        executed_frac: torch.Tensor,
        exits: torch.Tensor | None = None,
        budget: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The observations of a batch as one float32 tensor ``(N, obs_dim)`` (every mode).

        ``block_idx`` is one block for the whole batch or ``int64 (N,)`` one per row; ``exits`` is the
        ``float32 (N, 5)`` ``exit`` entry (required with ``exit_features``, refused without); ``budget``
        the ``(N,)`` ``budget`` entry (:func:`budget_feature`; required with ``budget_range``, refused without).
        """
        n = tokens.shape[0]
        if (exits is None) == self.exit_features:
            need = "needs the (N, 5) exit entry" if self.exit_features else "has no exit entry"
            raise ValueError(f"this encoder {need} (exit_features={self.exit_features})")
        if (budget is None) == (self.budget_range is not None):
            need = "needs the (N,) budget entry" if self.budget_range else "has no budget entry"
            raise ValueError(f"this encoder {need} (budget_range={self.budget_range})")
        if self.mode == "tokens":
            feat = standardize(tokens, self.bound).reshape(n, -1)
        else:
            pooled = tokens[:, 0] if self.pool == "cls" else tokens[:, self.num_prefix_tokens :].mean(1)
            feat = standardize(pooled, self.bound)
        if self._eye is None or self._eye.device != tokens.device:
            # Row `depth` is all zeros: the one-hot of "no next block" after the last one.
            self._eye = torch.cat([torch.eye(self.depth), torch.zeros(1, self.depth)]).to(tokens.device)
        if isinstance(block_idx, torch.Tensor):
            onehot = self._eye[block_idx.clamp(max=self.depth)]
        else:
            onehot = self._eye[min(block_idx, self.depth)].expand(n, -1)
        parts = [feat, onehot, executed_frac.float().view(n, 1)]
        if budget is not None:
            parts.append(budget.float().reshape(-1, 1).expand(n, 1))
        if exits is not None:
            parts.append(exits.float())
        return torch.cat(parts, dim=1)

    def __call__(
        self,
        tokens: torch.Tensor,
        block_idx: int,
        executed_frac: torch.Tensor,
        exits: torch.Tensor | None = None,
        budget: torch.Tensor | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Encode a batch.

        Args:
            tokens: ``(N, T, D)`` token state before block ``block_idx``.
            block_idx: Block about to be decided (``depth`` after the last block).
            executed_frac: ``(N,)`` blocks executed so far divided by ``depth``.
            exits: ``(N, 5)`` the ``exit`` entry (encoders with ``exit_features`` only).
            budget: ``(N,)`` the ``budget`` entry (encoders with ``budget_range`` only).

        Returns:
            ``(N, obs_dim)`` in ``"flat"`` mode, else a dict of ``(N, *shape)`` tensors.
        """
        packed = self.pack(tokens, block_idx, executed_frac, exits, budget)
        if self.mode == "flat":
            return packed
        return self.split(packed)

    def split(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed ``(N, obs_dim)`` -> dict of ``(N, *shape)`` views."""
        out, start = {}, 0
        for key, shape in self.parts.items():
            size = math.prod(shape)
            out[key] = packed[:, start : start + size].reshape(-1, *shape)
            start += size
        return out

    def unpack_numpy(self, packed: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """Host ``(N, obs_dim)`` -> a batch of observations as new, independent arrays."""
        if self.mode == "flat":
            return np.array(packed, dtype=np.float32)
        out, start = {}, 0
        for key, shape in self.parts.items():
            size = math.prod(shape)
            out[key] = np.array(packed[:, start : start + size], dtype=np.float32).reshape(-1, *shape)
            start += size
        return {key: out[key] for key in sorted(out)}  # the key order of spaces.Dict


def encoder_for(
    backbone: torch.nn.Module,
    mode: ObsMode = "flat",
    exit_features: bool = False,
    budget_range: tuple[float, float] | None = None,
) -> ObservationEncoder:
    """The encoder matching a :class:`~vitskip_env.SkippableViT` (class token if it has one, else mean pooling)."""
    vit = backbone.vit
    has_cls = getattr(vit, "cls_token", None) is not None
    return ObservationEncoder(
        mode,
        depth=backbone.depth,
        num_tokens=backbone.num_tokens,
        embed_dim=backbone.embed_dim,
        pool="cls" if has_cls else "mean",
        num_prefix_tokens=backbone.num_prefix_tokens,
        exit_features=exit_features,
        budget_range=budget_range,
    )
