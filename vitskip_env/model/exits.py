"""Early-exit heads (LGViT, arXiv 2308.00255): classifiers that read the token state after a block.

Three families, each turning the token state ``(B, T, D)`` after block ``position`` into logits:

* ``local`` (LGViT's *local perception* head, ``conv1_1``): the patch tokens (prefix tokens
  removed) on their grid, then 1x1 conv -> GELU -> BN -> depthwise 3x3 conv -> GELU -> BN -> 1x1
  conv -> BN, plus a residual; ``local_light`` (``conv2_1``) drops the depthwise conv.
* ``global2`` / ``global3`` (*global aggregation*): multi-head attention without qkv bias over the
  patch tokens subsampled with stride 2 / 3 on the grid (an 8x8 grid keeps 16 / 9 tokens).
* ``linear``: the backbone's own final norm and classifier applied at that depth (no parameters of
  its own; a skip-robust backbone already makes it a usable exit, and it is the ablation LGViT's
  baselines use).

LGViT heads end the same way: ``Linear(mean of the head's output tokens + that layer's class token)``.
The final classifier after the last block is always the last exit point and is not a head here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .backbone import SkippableViT

#: Every head kind, in LGViT's order (local first, global last); ``linear`` is the backbone's own head.
HEAD_KINDS = ("local", "local_light", "global2", "global3", "linear")
#: LGViT's layout for a 12-block ViT: exits after blocks 4..11 (0-based 3..10), two of each kind.
LGVIT_12 = (
    (3, 4, 5, 6, 7, 8, 9, 10),
    ("local", "local", "local_light", "local_light", "global2", "global2", "global3", "global3"),
)


def default_layout(depth: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Exit positions (0-based block after which an exit reads the tokens) and head kinds for ``depth`` blocks.

    For 12 blocks, LGViT's exact layout; otherwise LGViT's proportions: exits after every block of
    the later half except the last (whose exit is the final classifier), local heads first and
    global heads last (8 blocks: after blocks 3..6 -> ``local``, ``local_light``, ``global2``, ``global3``).
    """
    if depth == 12:
        return LGVIT_12
    if depth < 2:
        raise ValueError(f"early exit needs a backbone of at least 2 blocks, got {depth}")
    positions = tuple(range(max(0, depth // 2 - 1), depth - 1))
    n = len(positions)
    kinds = tuple(HEAD_KINDS[min(3, (4 * i) // n)] for i in range(n))
    return positions, kinds


def check_layout(positions: Sequence[int], kinds: Sequence[str], depth: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Validated ``(positions, kinds)``: strictly increasing positions in ``[0, depth - 2]``, one known kind each.

    Raises:
        ValueError: What is wrong and what is allowed.
    """
    positions, kinds = tuple(int(p) for p in positions), tuple(str(k) for k in kinds)
    if not positions:
        raise ValueError("exit positions are empty; give at least one block index, e.g. [3, 4, 5, 6]")
    if len(kinds) != len(positions):
        raise ValueError(f"{len(positions)} exit positions {list(positions)} but {len(kinds)} head kinds {list(kinds)}")
    bad = [p for p in positions if not 0 <= p <= depth - 2]
    if bad:
        raise ValueError(
            f"exit positions {bad} lie outside this {depth}-block backbone: an exit reads the tokens after block p, with "
            f"0 <= p <= {depth - 2} (after the last block, {depth - 1}, the backbone's own classifier is the final exit)"
        )
    if any(b <= a for a, b in itertools.pairwise(positions)):
        raise ValueError(f"exit positions must be strictly increasing, got {list(positions)}")
    unknown = sorted({k for k in kinds if k not in HEAD_KINDS})
    if unknown:
        raise ValueError(f"unknown exit head kinds {unknown}; choose from {list(HEAD_KINDS)}")
    return positions, kinds


class LocalPerception(nn.Module):
    """LGViT's local perception head body on ``(B, N, D)`` patch tokens of an ``h x w`` grid (residual included)."""

    def __init__(self, dim: int, depthwise: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))
        self.depthwise = (
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(), nn.BatchNorm2d(dim)) if depthwise else None
        )
        self.conv2 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim))

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _n, d = patches.shape
        x = patches.transpose(1, 2).reshape(b, d, *grid)
        x = self.conv1(x)
        if self.depthwise is not None:
            x = self.depthwise(x)
        x = self.conv2(x)
        return x.flatten(2).transpose(1, 2) + patches


class GlobalAggregation(nn.Module):
    """LGViT's global aggregation head body: attention over the patch tokens subsampled with ``stride`` on the grid."""

    def __init__(self, dim: int, num_heads: int, stride: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"global exit heads need embed_dim ({dim}) divisible by num_heads ({num_heads})")
        self.num_heads, self.stride = num_heads, stride
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _n, d = patches.shape
        x = patches.transpose(1, 2).reshape(b, d, *grid)[:, :, :: self.stride, :: self.stride]
        x = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(x).reshape(b, -1, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, -1, d))


class ExitHead(nn.Module):
    """One LGViT exit: a head body on the patch tokens, then ``Linear(mean(body) + class token)``."""

    def __init__(self, kind: str, dim: int, num_classes: int, num_heads: int) -> None:
        super().__init__()
        if kind in ("local", "local_light"):
            self.body: nn.Module = LocalPerception(dim, depthwise=kind == "local")
        elif kind in ("global2", "global3"):
            self.body = GlobalAggregation(dim, num_heads, stride=int(kind[-1]))
        else:
            raise ValueError(f"ExitHead builds {list(HEAD_KINDS[:4])}; 'linear' exits use the backbone's own head")
        self.kind = kind
        self.fc = nn.Linear(dim, num_classes)

    def features(self, tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
        """The body's output tokens ``(B, N', D)`` (what LGViT's feature distillation compares)."""
        return self.body(tokens[:, prefix:], grid)

    def classify(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits from the body's output tokens and the layer's class token."""
        return self.fc(features.mean(1) + tokens[:, 0])

    def forward(self, tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
        return self.classify(self.features(tokens, prefix, grid), tokens)


class ExitHeads(nn.Module):
    """The exit heads of one backbone: ``logits(k, tokens, backbone)`` for the ``k``-th exit.

    Args:
        backbone: The backbone the heads read (its width, classes, prefix tokens and patch grid).
        positions: Block after which each exit reads the tokens (0-based, strictly increasing, at most
            ``depth - 2``); default: :func:`default_layout`.
        kinds: One of :data:`HEAD_KINDS` per position; default: :func:`default_layout`'s, or
            ``"linear"`` for every position when only ``positions`` is given.
        num_heads: Attention heads of the global heads (default: 8 as in LGViT when the width allows,
            else the backbone's).

    Example:
        >>> vit = SkippableViT("micro", num_classes=10)
        >>> heads = ExitHeads(vit, positions=[1, 2], kinds=["local", "global2"])
        >>> heads.logits(0, vit.embed(torch.randn(2, 3, 32, 32)), vit).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        backbone: SkippableViT,
        positions: Sequence[int] | None = None,
        kinds: Sequence[str] | None = None,
        num_heads: int | None = None,
    ) -> None:
        super().__init__()
        if positions is None:
            positions, default_kinds = default_layout(backbone.depth)
            kinds = default_kinds if kinds is None else kinds
        elif kinds is None:
            kinds = ["linear"] * len(positions)
        self.positions, self.kinds = check_layout(positions, kinds, backbone.depth)
        self.depth, self.dim, self.num_classes = backbone.depth, backbone.embed_dim, backbone.num_classes
        self.prefix = backbone.num_prefix_tokens
        n_patches = backbone.num_tokens - self.prefix
        side = math.isqrt(n_patches)
        needs_grid = any(k != "linear" for k in self.kinds)
        if needs_grid and side * side != n_patches:
            raise ValueError(f"local and global exit heads need a square patch grid; this backbone has {n_patches} patches")
        self.grid = (side, side)
        if num_heads is None:
            num_heads = 8 if self.dim % 8 == 0 else int(backbone.blocks[0].attn.num_heads)
        self.num_heads = int(num_heads)
        self.heads = nn.ModuleDict(
            {
                str(p): ExitHead(k, self.dim, self.num_classes, self.num_heads)
                for p, k in zip(self.positions, self.kinds, strict=True)
                if k != "linear"
            }
        )
        self._at = {p: i for i, p in enumerate(self.positions)}

    def __len__(self) -> int:
        return len(self.positions)

    def index_at(self, block: int) -> int | None:
        """The exit index reading the tokens after ``block``, or ``None`` where there is no exit."""
        return self._at.get(block)

    def logits(self, k: int, tokens: torch.Tensor, backbone: SkippableViT) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of exit ``k`` (``0 <= k < len(self)``) on the tokens after its block."""
        p = self.positions[k]
        if self.kinds[k] == "linear":
            return backbone.head(tokens)
        return self.heads[str(p)](tokens, self.prefix, self.grid)

    def logits_and_features(
        self, k: int, tokens: torch.Tensor, backbone: SkippableViT
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exit ``k``'s logits and its head body's output tokens (``None`` for a ``linear`` exit)."""
        if self.kinds[k] == "linear":
            return backbone.head(tokens), None
        head = self.heads[str(self.positions[k])]
        feats = head.features(tokens, self.prefix, self.grid)
        return head.classify(feats, tokens), feats

    def head_flops(self, backbone: SkippableViT) -> list[int]:
        """FLOPs of each exit for one image (a ``linear`` exit counts the backbone's final norm and classifier)."""
        from torch.utils.flop_counter import FlopCounterMode

        p = next(backbone.parameters())
        x = torch.zeros(1, 3, backbone.img_size, backbone.img_size, device=p.device, dtype=p.dtype)
        was_training = self.training
        self.eval()
        out = []
        with torch.no_grad():
            tokens = backbone.embed(x)
            for k in range(len(self)):
                counter = FlopCounterMode(display=False)
                with counter:
                    self.logits(k, tokens, backbone)
                out.append(int(counter.get_total_flops()))
        self.train(was_training)
        return out

    def config(self) -> dict[str, Any]:
        """What rebuilds these heads on a backbone of the same shape (JSON)."""
        return {
            "positions": list(self.positions),
            "kinds": list(self.kinds),
            "num_heads": self.num_heads,
            "depth": self.depth,
            "embed_dim": self.dim,
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], backbone: SkippableViT) -> ExitHeads:
        """Heads described by :meth:`config` on ``backbone`` (weights not loaded).

        Raises:
            ValueError: The config was made for a backbone of another depth, width or class count.
        """
        mismatch = {
            key: (config.get(key), have)
            for key, have in (
                ("depth", backbone.depth),
                ("embed_dim", backbone.embed_dim),
                ("num_classes", backbone.num_classes),
            )
            if config.get(key) != have
        }
        if mismatch:
            raise ValueError(
                "these exit heads were made for another backbone: (heads, backbone) differ in "
                f"{mismatch}; use the backbone they were trained with, or train heads for this one (train/exits.py)"
            )
        return cls(backbone, config["positions"], config["kinds"], num_heads=int(config["num_heads"]))


__all__ = [
    "HEAD_KINDS",
    "LGVIT_12",
    "ExitHead",
    "ExitHeads",
    "GlobalAggregation",
    "LocalPerception",
    "check_layout",
    "default_layout",
]
