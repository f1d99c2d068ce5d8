"""Stable-Baselines3 features extractors for the ViTSkip observations (one per ``obs_mode``).

Every observation holds the token features, the one-hot index of the block about to be decided
and the fraction of blocks executed so far (``vitskip_env/observations.py``). Instead of feeding
the one-hot raw into an MLP beside a 128-2000 wide token vector, the extractors map it through a
learned **block embedding** (``one_hot @ W`` is exactly an ``nn.Embedding`` lookup, and stays
correct if ``VecNormalize`` rescales the one-hot columns) and combine it with the token features:

* :class:`FlatSkipExtractor` (``obs_mode="flat"``, one Box): split the vector, then
  ``MLP([token | block embedding | executed_frac])``;
* :class:`DictSkipExtractor` (``obs_mode="dict"``): the same network on the named entries;
* :class:`TokenSkipExtractor` (``obs_mode="tokens"``): attention pooling over the ``(T, D)``
  tokens with a learned query plus the block embedding (the block decides what to look at;
  ``nn.MultiheadAttention``), then the same MLP.

:func:`extractor_for` picks the class from an observation space; :func:`policy_kwargs_for` builds
SB3 ``policy_kwargs`` with it.

Example:
    >>> from stable_baselines3 import PPO
    >>> model = PPO("MlpPolicy", env, policy_kwargs=policy_kwargs_for(env.observation_space))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

DICT_KEYS = frozenset({"token", "block", "executed_frac"})
TOKENS_KEYS = frozenset({"tokens", "block", "executed_frac"})
#: The optional entry of envs with an exit action (``actions="skip_exit"``), ``[-1, 1]`` per feature.
EXIT_KEY = "exit"
#: The optional entries after ``executed_frac``, in the flat layout's order (budget-conditioned envs, exit action).
OPTIONAL_KEYS: tuple[str, ...] = ("budget", EXIT_KEY)


def flat_parts(space: spaces.Space) -> tuple[int, int, int]:
    """``(D, L, E)`` of a flat Box ``[token (D) | block (L) | executed_frac (1) | budget, exit (E)]`` (``E = 0`` without them).

    Token entries reach below ``-1`` (bound ``-sqrt(D)``), exit entries are in ``[-1, 1]``, the
    block one-hot and the executed fraction in ``[0, 1]``.

    Raises:
        ValueError: The space is not a ViTSkip flat observation space.
    """
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"not a flat ViTSkip observation space (a 1-D Box): {space}")
    low, high = np.asarray(space.low), np.asarray(space.high)
    d = int((low < -1).sum())
    e = int((low == -1).sum())
    depth = space.shape[0] - d - 1 - e
    n = space.shape[0]
    ok = d > 0 and depth > 0 and (low[:d] < -1).all() and (low[d : n - e] == 0).all() and (high[d:] == 1).all()
    ok = ok and (low[n - e :] == -1).all()
    if not ok:
        raise ValueError(
            f"not a flat ViTSkip observation space [token (D) | block one-hot (L) | executed_frac (1) | exit (E)]: "
            f"{space}; token entries must have a lower bound below -1, exit entries bounds [-1, 1], the rest [0, 1]"
        )
    return d, depth, e


def flat_layout(space: spaces.Space) -> tuple[int, int]:
    """``(embed_dim D, depth L)`` of a flat ViTSkip observation Box ``[token (D) | block (L) | executed_frac (1)]``.

    The token entries are the only ones with a negative lower bound (``-sqrt(D)``); the block
    one-hot and the executed fraction lie in ``[0, 1]``.

    Raises:
        ValueError: The space is not a ViTSkip flat observation space.
    """
    d, depth, _ = flat_parts(space)
    return d, depth


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``Linear -> activation`` for each consecutive pair of ``sizes`` (activation after every layer)."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers)


class _SkipHead(nn.Module):
    """``MLP([features | block embedding | executed_frac (and the exit entry)])`` shared by all extractors."""

    def __init__(
        self, in_dim: int, depth: int, features_dim: int, hidden: Sequence[int], block_embed_dim: int, rest_dim: int = 1
    ) -> None:
        super().__init__()
        self.block_embed = nn.Linear(depth, block_embed_dim, bias=False)  # one-hot @ W == an embedding lookup
        self.net = mlp([in_dim + block_embed_dim + rest_dim, *hidden, features_dim])

    def forward(self, feat: torch.Tensor, block: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([feat, self.block_embed(block), frac], dim=1))


class FlatSkipExtractor(BaseFeaturesExtractor):
    """MLP with a learned block embedding for ``obs_mode="flat"`` (the default).

    Args:
        observation_space: The flat Box ``(D + L + 1,)``.
        features_dim: Output width.
        hidden: Hidden layer widths before the output layer.
        block_embed_dim: Width of the block embedding.
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        features_dim: int = 128,
        hidden: Sequence[int] = (128,),
        block_embed_dim: int = 16,
    ) -> None:
        super().__init__(observation_space, features_dim)
        self.embed_dim, self.depth, exit_dims = flat_parts(observation_space)
        self.head = _SkipHead(self.embed_dim, self.depth, features_dim, hidden, block_embed_dim, 1 + exit_dims)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        d, depth = self.embed_dim, self.depth
        return self.head(observations[:, :d], observations[:, d : d + depth], observations[:, d + depth :])


class DictSkipExtractor(BaseFeaturesExtractor):
    """MLP with a learned block embedding for ``obs_mode="dict"`` (``token``, ``block``, ``executed_frac``).

    Args:
        observation_space: ``Dict(token=(D,), block=(L,), executed_frac=(1,))``.
        features_dim: Output width.
        hidden: Hidden layer widths before the output layer.
        block_embed_dim: Width of the block embedding.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        features_dim: int = 128,
        hidden: Sequence[int] = (128,),
        block_embed_dim: int = 16,
    ) -> None:
        super().__init__(observation_space, features_dim)
        _check_keys(observation_space, DICT_KEYS)
        self.extra = [k for k in OPTIONAL_KEYS if k in observation_space.spaces]
        self.exits = EXIT_KEY in self.extra
        rest = 1 + sum(observation_space[k].shape[0] for k in self.extra)
        self.head = _SkipHead(
            observation_space["token"].shape[0],
            observation_space["block"].shape[0],
            features_dim,
            hidden,
            block_embed_dim,
            rest,
        )

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(observations["token"], observations["block"], _rest(observations, self.extra))


class TokenSkipExtractor(BaseFeaturesExtractor):
    """Attention pooling over the token state for ``obs_mode="tokens"``.

    A learned query (plus the block embedding, so each block can look at different tokens) attends
    over the projected ``(T, D)`` tokens with ``nn.MultiheadAttention``; the pooled vector goes
    through the same MLP as the other extractors with the block embedding and executed fraction.

    Args:
        observation_space: ``Dict(tokens=(T, D), block=(L,), executed_frac=(1,))``.
        features_dim: Output width.
        hidden: Hidden layer widths before the output layer.
        block_embed_dim: Width of the block embedding.
        attn_dim: Width the tokens are projected to before attention.
        num_heads: Attention heads (must divide ``attn_dim``).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        features_dim: int = 128,
        hidden: Sequence[int] = (128,),
        block_embed_dim: int = 16,
        attn_dim: int = 64,
        num_heads: int = 4,
    ) -> None:
        super().__init__(observation_space, features_dim)
        _check_keys(observation_space, TOKENS_KEYS)
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by num_heads ({num_heads})")
        _, embed_dim = observation_space["tokens"].shape
        depth = observation_space["block"].shape[0]
        self.proj = nn.Linear(embed_dim, attn_dim)
        self.query = nn.Parameter(torch.zeros(1, 1, attn_dim))
        self.query_block = nn.Linear(depth, attn_dim, bias=False)
        self.attn = nn.MultiheadAttention(attn_dim, num_heads, batch_first=True)
        self.extra = [k for k in OPTIONAL_KEYS if k in observation_space.spaces]
        self.exits = EXIT_KEY in self.extra
        rest = 1 + sum(observation_space[k].shape[0] for k in self.extra)
        self.head = _SkipHead(attn_dim, depth, features_dim, hidden, block_embed_dim, rest)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        block = observations["block"]
        tokens = self.proj(observations["tokens"])  # (N, T, A)
        query = self.query + self.query_block(block).unsqueeze(1)  # (N, 1, A)
        pooled, _ = self.attn(query, tokens, tokens, need_weights=False)
        return self.head(pooled.squeeze(1), block, _rest(observations, self.extra))


def _rest(observations: dict[str, torch.Tensor], extra: list[str]) -> torch.Tensor:
    """``executed_frac``, then the budget and exit entries when the env has them (the flat layout's order)."""
    frac = observations["executed_frac"]
    return torch.cat([frac, *(observations[k] for k in extra)], dim=1) if extra else frac


def _check_keys(space: spaces.Space, keys: frozenset[str]) -> None:
    if not isinstance(space, spaces.Dict) or set(space.spaces) - set(OPTIONAL_KEYS) != keys:
        got = sorted(space.spaces) if isinstance(space, spaces.Dict) else type(space).__name__
        raise ValueError(f"expected a Dict observation space with keys {sorted(keys)}, got {got}")


def extractor_for(observation_space: spaces.Space) -> type[BaseFeaturesExtractor]:
    """The features extractor class for a ViTSkip observation space (flat, dict or tokens).

    Raises:
        ValueError: The space is none of the ViTSkip observation spaces.
    """
    if isinstance(observation_space, spaces.Dict):
        keys = set(observation_space.spaces) - set(OPTIONAL_KEYS)
        if keys == DICT_KEYS:
            return DictSkipExtractor
        if keys == TOKENS_KEYS:
            return TokenSkipExtractor
        raise ValueError(
            f"Dict observation space with keys {sorted(keys)} is not a ViTSkip one "
            f"(obs_mode='dict': {sorted(DICT_KEYS)}, obs_mode='tokens': {sorted(TOKENS_KEYS)})"
        )
    flat_layout(observation_space)  # raises with the reason
    return FlatSkipExtractor


def policy_kwargs_for(observation_space: spaces.Space, **extractor_kwargs: Any) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` selecting :func:`extractor_for` ``(observation_space)`` with ``extractor_kwargs``."""
    return {"features_extractor_class": extractor_for(observation_space), "features_extractor_kwargs": dict(extractor_kwargs)}
