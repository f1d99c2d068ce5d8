"""``FoldedDecision``: a policy's per-block decision in a handful of kernels, for ``DynamicViT`` at inference.

The exact decision (:meth:`SkipPolicy.forward`) packs the observation (pooled token, block one-hot,
executed fraction: a concatenation), runs the network layer by layer (the block embedding, the
first ``Linear`` on the concatenation, ...) and reads the action the way SB3 does (log-sum-exp,
soft-max, arg-max). At batch 1 on a CPU that is ~20 small kernels, ~100 us a block: as much as
half a block of the ``demo`` backbone. Most of it is constant per block, so it is folded once:

- the block one-hot and its embedding only ever take ``depth + 1`` values: their contribution
  through the first ``Linear`` (with its bias) is a per-block constant row ``c[i]``;
- the pooled token and the executed fraction enter that ``Linear`` linearly:
  ``h = addr(standardize(pooled) @ W_token + c[i], count, w_count / depth)``; the first term depends
  on the tokens only, so it is computed once per row and kept while the row skips blocks
  (:meth:`FoldedDecision.features`);
- the hidden layers run as they are;
- with two actions every deterministic rule executes iff ``logit_1 > logit_0``, so the last
  ``Linear`` is folded into one vector: ``margin = h @ (w_1 - w_0) + (b_1 - b_0)``.

That is ~8 kernels. For a few images on a CPU even those cost mostly dispatch (~4 us a kernel), so
there the same folded arithmetic runs in NumPy on the host (:meth:`FoldedDecision.margin_host`,
~1 us an op; activations :data:`HOST_ACTIVATIONS`). The folded arithmetic rounds differently from
the exact path, so a decision whose margin is within :attr:`FoldedDecision.tol` of zero is
recomputed exactly by the caller: the decisions are the exact path's, always (tested), at the cost
of one extra comparison per block.

A skip-and-exit policy (``actions="skip_exit"``, three actions, ``SkipExitViT``) folds the same
way: its exit entry enters the first ``Linear`` linearly too (``+ exit @ W_exit``), and the last
``Linear`` folds into two margins, of execute and of exit over skip: the action is skip where
both are ``<= 0``, else the larger one's.

A budget-conditioned policy's ``budget`` entry is constant for a given setting of the model's knob,
so it folds into the per-block constant too (:meth:`FoldedDecision.build` with ``budget=``;
``DynamicViT.set_budget`` re-folds).

Supported policies: ``"flat"`` observations without VecNormalize statistics, a network that
starts with a ``Linear`` on the packed observation (optionally behind a ``Columns`` that maps only
the one-hot group) and ends with a ``Linear`` to 2 (3 with exits) outputs. :meth:`FoldedDecision.build` returns
``None`` for anything else, and ``DynamicViT`` keeps the exact path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..observations import standardize
from ..runtime import weights_key
from .netspec import Columns
from .policy import SkipPolicy

#: Hidden-layer activations the NumPy path knows (any other keeps the decision in torch).
HOST_ACTIVATIONS: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray]] = {
    nn.ReLU: lambda x: np.maximum(x, 0, out=x),
    nn.Tanh: lambda x: np.tanh(x, out=x),
    nn.Sigmoid: lambda x: 1.0 / (1.0 + np.exp(-x)),
    nn.SiLU: lambda x: x / (1.0 + np.exp(-x)),
}


class FoldedDecision(nn.Module):
    """The folded decision of one :class:`SkipPolicy` (build it with :meth:`build`).

    Buffers are not persistent: they are derived from the policy and never saved.
    """

    def __init__(
        self,
        policy: SkipPolicy,
        const: torch.Tensor,
        w_token: torch.Tensor,
        w_count: torch.Tensor,
        hidden: list[nn.Module],
        w_margin: torch.Tensor,
        b_margin: torch.Tensor,
        w_exit: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        enc = policy.encoder
        self.depth, self.bound = enc.depth, enc.bound
        self.cls_pool, self.num_prefix = enc.pool == "cls", enc.num_prefix_tokens
        self.register_buffer("const", const, persistent=False)
        self.register_buffer("w_token", w_token, persistent=False)
        self.register_buffer("w_count", w_count, persistent=False)
        self.register_buffer("w_margin", w_margin, persistent=False)
        self.register_buffer("b_margin", b_margin, persistent=False)
        #: ``(5, H)`` first-layer weights of the exit entry (skip-and-exit policies), else ``None``.
        self.w_exit = w_exit
        self.hidden = hidden  # the policy's own modules (not registered twice)
        self._np: dict[str, np.ndarray | float] | None = None  # NumPy copies of the buffers, made on first use
        self._weights = weights_key(policy)
        scale = float(w_margin.abs().sum() + b_margin.abs().sum())
        #: Margins within this distance of zero are re-decided exactly (~1e4 x the folding's rounding error).
        self.tol = 1e-4 * (1.0 + scale)
        self._host = self._host_program(hidden)

    def _host_program(self, hidden: list[nn.Module]) -> list[tuple[np.ndarray, np.ndarray | None] | Callable] | None:
        """The hidden layers as NumPy steps (``(W.T, b)`` or an activation), or ``None`` if one is unknown."""
        steps: list[tuple[np.ndarray, np.ndarray | None] | Callable] = []
        for layer in hidden:
            if isinstance(layer, nn.Linear):
                bias = None if layer.bias is None else layer.bias.detach().float().cpu().numpy()
                steps.append((layer.weight.detach().float().cpu().numpy().T.copy(), bias))
            elif type(layer) in HOST_ACTIVATIONS:
                steps.append(HOST_ACTIVATIONS[type(layer)])
            else:
                return None
        return steps

    def is_stale(self, policy: SkipPolicy) -> bool:
        """Whether ``policy``'s weights changed in place since the fold (an optimiser step, ``load_state_dict``...)."""
        return weights_key(policy) != self._weights

    @property
    def has_host_path(self) -> bool:
        """Whether :meth:`margin_host` is available (every hidden activation is in :data:`HOST_ACTIVATIONS`)."""
        return self._host is not None

    def margin_host(self, tokens: torch.Tensor, block: int, count: np.ndarray) -> np.ndarray:
        """:meth:`forward` in NumPy on the host, for a few CPU images (no torch kernels).

        Args:
            tokens: ``(N, T, D)`` CPU token state.
            block: Block index.
            count: ``int (N,)`` blocks executed so far.
        """
        return self.margin_from_host(self.features_host(tokens), block, count)

    def features_host(self, tokens: torch.Tensor) -> np.ndarray:
        """:meth:`features` in NumPy: ``float32 (N, H)`` token part of the first layer, for CPU tokens."""
        if self._host is None:
            raise RuntimeError("this policy has a hidden layer without a NumPy form; use forward()")
        if self._np is None:
            self._np = {k: getattr(self, k).detach().cpu().numpy() for k in ("const", "w_token", "w_margin")}
            self._np["b_margin"] = self.b_margin.cpu().numpy() if self.b_margin.ndim else float(self.b_margin)
            if self.w_exit is not None:
                self._np["w_exit"] = self.w_exit.detach().cpu().numpy()
            # const[block] + count * w_count for every (block, count): one lookup per decision
            counts = torch.arange(self.depth + 1, dtype=torch.float32, device=self.const.device)
            table = self.const[:, None, :] + counts[None, :, None] * self.w_count
            self._np["table"] = table.detach().cpu().numpy()
        if self.cls_pool and tokens.dtype == torch.float32:
            x = tokens.numpy()[:, 0]
        else:
            x = (tokens[:, 0] if self.cls_pool else tokens[:, self.num_prefix :].mean(1)).float().numpy()
        # standardize(x) = (x - mean) / sqrt(var + eps), as F.layer_norm (its clamp to +-sqrt(D) never binds:
        # a standardised entry is at most sqrt(D - 1)); np.add.reduce avoids mean()/var()'s Python overhead.
        inv_d = 1.0 / x.shape[1]
        x = x - np.add.reduce(x, 1, keepdims=True) * inv_d
        scale = 1.0 / np.sqrt(np.add.reduce(x * x, 1, keepdims=True) * inv_d + 1e-5)
        h = x @ self._np["w_token"]
        h *= scale
        return h

    def margin_from_host(
        self, features: np.ndarray, block: int, count: np.ndarray, exits: np.ndarray | None = None
    ) -> np.ndarray:
        """:meth:`margin_from` in NumPy (``features`` from :meth:`features_host`, not modified; ``count`` integers).

        A skip-and-exit policy also takes its ``exits`` entry ``(N, 5)`` and returns ``(N, 2)``
        margins (execute, exit) over skip.
        """
        w = self._np
        if w is None or self._host is None:
            raise RuntimeError("call features_host() first (and only for a policy with a NumPy form)")
        h = features + w["table"][block][count]
        if exits is not None:
            h += exits @ w["w_exit"]
        for step in self._host:
            if isinstance(step, tuple):
                h = h @ step[0]
                if step[1] is not None:
                    h += step[1]
            else:
                h = step(h)
        return h @ w["w_margin"] + w["b_margin"]

    @classmethod
    @torch.no_grad()
    def build(cls, policy: SkipPolicy, budget: float | None = None) -> FoldedDecision | None:
        """The folded decision of ``policy``, or ``None`` when its form is not supported (see the module doc).

        ``budget``: the ``budget`` entry of a budget-conditioned policy (constant per model setting, so it
        is folded into the per-block constant like the block one-hot; required for such a policy).
        """
        enc = policy.encoder
        layers = list(policy.net) if isinstance(policy.net, nn.Sequential) else [policy.net]
        if enc.mode != "flat" or policy.normalized or len(layers) < 2:
            return None
        n_budget = 1 if enc.budget_range else 0
        if n_budget and budget is None:
            raise ValueError("a budget-conditioned policy folds with its budget entry: pass budget=")
        d, depth = enc.embed_dim, enc.depth
        n_rest = enc.obs_dim - d - depth - 1  # the budget entry, then the exit entry
        n_exit = n_rest - n_budget
        onehots = torch.cat([torch.eye(depth), torch.zeros(1, depth)])  # row `depth`: no next block
        first = layers.pop(0)
        embed: nn.Module | None = None
        if isinstance(first, Columns):
            if first.sizes != [d, depth, 1 + n_rest] or set(first.nets) - {"1"}:
                return None
            embed = first.nets["1"] if "1" in first.nets else None  # noqa: SIM401 (ModuleDict has no .get)
            first = layers.pop(0) if layers else None
        last = layers.pop() if layers else None
        n_actions = policy.n_actions
        if not isinstance(first, nn.Linear) or not isinstance(last, nn.Linear) or last.out_features != n_actions:
            return None
        w, b = first.weight.float(), (first.bias.float() if first.bias is not None else None)
        emb = embed(onehots.to(w)) if embed is not None else onehots.to(w)
        e = emb.shape[1]
        if w.shape[1] != d + e + 1 + n_rest:
            return None
        const = emb @ w[:, d : d + e].T + (b if b is not None else 0.0)
        if n_budget:
            const = const + float(budget) * w[:, d + e + 1]  # type: ignore[arg-type]
        wl = last.weight.float()
        bl = last.bias.float() if last.bias is not None else torch.zeros(n_actions, device=wl.device)
        if n_actions == 2:
            w_margin, b_margin = (wl[1] - wl[0]).contiguous(), (bl[1] - bl[0]).reshape(())
        else:  # execute and exit over skip: (H, 2)
            w_margin, b_margin = (wl[1:] - wl[0]).T.contiguous(), (bl[1:] - bl[0]).contiguous()
        w_exit = w[:, d + e + 1 + n_budget :].T.contiguous() if n_exit else None
        return cls(
            policy, const.contiguous(), w[:, :d].T.contiguous(), (w[:, d + e] / depth).contiguous(), layers, w_margin,
            b_margin, w_exit,
        )  # fmt: skip

    def forward(self, tokens: torch.Tensor, block: int, count: torch.Tensor) -> torch.Tensor:
        """``float32 (N,)`` decision margins: execute where ``> 0`` (re-decide where ``|margin| <= tol``).

        Args:
            tokens: ``(N, T, D)`` token state before ``block``.
            block: Block index.
            count: ``float32 (N,)`` blocks executed so far.
        """
        return self.margin_from(self.features(self.pool(tokens)), block, count)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` the pooled token the policy sees (a view for class-token pooling)."""
        return tokens[:, 0] if self.cls_pool else tokens[:, self.num_prefix :].mean(1)

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """``float32 (N, H)``: the token's part of the first layer (``standardize(pooled) @ W_token``).

        It depends on the tokens only, so a row that skipped a block keeps its features: ``DynamicViT``
        recomputes them only for the rows a block changed, and :meth:`margin_from` adds the rest.
        """
        return standardize(pooled, self.bound) @ self.w_token

    def margin_from(self, features: torch.Tensor, block: int, count: torch.Tensor) -> torch.Tensor:
        """``float32 (N,)`` margins from :meth:`features` (the block's constant and the count added here)."""
        h = torch.addr(features + self.const[block], count, self.w_count)
        for layer in self.hidden:
            h = layer.forward(h)
        return torch.addmv(self.b_margin, h, self.w_margin)
