"""Patch selection: which patch tokens a ViT keeps, and the ViT forward on the kept ones only.

Dropped patches are *removed*: the token tensor shrinks from ``(B, T, D)`` to ``(B, prefix + k, D)``
before the first block, so every block does less work (nothing is masked). Prefix tokens (class,
distillation, registers) are always kept, in front.

Scorers (how the ``k`` patches of each image are chosen; every image keeps the same count, so the
tensor stays rectangular and the saving is real at any batch size):

- ``"cls_attn"``: the class token's attention to each patch in the first block, averaged over heads
  (EViT's criterion). Only the class token's query and every token's key are computed, without
  gradient: about one ``D x D`` projection per token, a small share of one block.
- ``"random"``: timm's own :class:`timm.layers.PatchDropout` (``patch_drop_rate``): a fresh random
  subset per image, the PatchDropout baseline.

AgentViT's batch-shared rule (:func:`shared_keep_mask`, :func:`keep_shared`): one score per patch for
the whole batch, a patch kept where its score is at least the mean score.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .backbone import SkippableViT

Scorer = Literal["cls_attn", "random"]
SCORERS: tuple[str, ...] = ("cls_attn", "random")


def kept_count(num_patches: int, keep_ratio: float) -> int:
    """Patches kept out of ``num_patches`` at ``keep_ratio`` (timm's ``PatchDropout`` count: at least one).

    Raises:
        ValueError: ``keep_ratio`` outside ``(0, 1]``.
    """
    if not (isinstance(keep_ratio, (int, float)) and 0.0 < keep_ratio <= 1.0 and math.isfinite(keep_ratio)):
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    return max(1, int(num_patches * float(keep_ratio) + 1e-9))


def check_scorer(scorer: str) -> None:
    """Raise a clear ``ValueError`` unless ``scorer`` is one of :data:`SCORERS`."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")


@torch.no_grad()
def cls_attention(vit: SkippableViT, tokens: torch.Tensor) -> torch.Tensor:
    """The class token's attention to each patch in the first block, averaged over heads: ``(B, P)``.

    Args:
        vit: The backbone (a timm pre-norm block first; the class token is prefix token 0).
        tokens: The embedded tokens ``(B, T, D)`` (:meth:`SkippableViT.embed`).

    Returns:
        Non-negative scores; a row sums to at most 1 (the rest is the prefix tokens' share).
    """
    block = vit.vit.blocks[0]
    attn = block.attn
    b, n, _ = tokens.shape
    h = block.norm1(tokens)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    dim = attn.num_heads * attn.head_dim
    q = nn.functional.linear(h[:, :1], weight[:dim], None if bias is None else bias[:dim])
    k = nn.functional.linear(h, weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])
    q = attn.q_norm(q.reshape(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2))
    k = attn.k_norm(k.reshape(b, n, attn.num_heads, attn.head_dim).transpose(1, 2))
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, T)
    return weights.mean(dim=1)[:, 0, vit.num_prefix_tokens :]


@torch.no_grad()
def first_block_state(vit: SkippableViT, tokens: torch.Tensor) -> torch.Tensor:
    """AgentViT's state: the first attention block's output (before the residual) averaged over channels, ``(B, P)``."""
    block = vit.vit.blocks[0]
    out = block.attn(block.norm1(tokens))
    return out.mean(dim=-1)[:, vit.num_prefix_tokens :]


def keep_top(tokens: torch.Tensor, scores: torch.Tensor, k: int, num_prefix: int) -> torch.Tensor:
    """Keep, per image, the prefix tokens and the ``k`` patches of highest score (in patch order).

    Args:
        tokens: ``(B, prefix + P, D)``.
        scores: ``(B, P)``.
        k: Patches kept per image, ``1 <= k <= P``.
        num_prefix: Prefix tokens in front of the patches.

    Returns:
        ``(B, prefix + k, D)``: a new, smaller tensor (gradients flow to the kept tokens).
    """
    patches = tokens[:, num_prefix:]
    if not 1 <= k <= patches.shape[1]:
        raise ValueError(f"k must be in [1, {patches.shape[1]}], got {k}")
    if k == patches.shape[1]:
        return tokens
    index = scores.topk(k, dim=1).indices.sort(dim=1).values
    kept = patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return torch.cat([tokens[:, :num_prefix], kept], dim=1)


def shared_keep_mask(scores: torch.Tensor) -> torch.Tensor:
    """AgentViT's rule: one score per patch ``(P,)`` -> ``bool (P,)``, kept where the score is at least the mean."""
    if scores.dim() != 1:
        raise ValueError(f"expected one score per patch (P,), got shape {tuple(scores.shape)}")
    return scores >= scores.mean()


def keep_shared(tokens: torch.Tensor, mask: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Keep the prefix tokens and the patches where ``mask`` ``(P,)`` is true, the same for every image."""
    if mask.all():
        return tokens
    index = mask.nonzero().squeeze(1) + num_prefix
    index = torch.cat([torch.arange(num_prefix, device=tokens.device), index.to(tokens.device)])
    return tokens.index_select(1, index)


def random_dropout(keep_ratio: float, num_prefix: int) -> nn.Module:
    """timm's :class:`~timm.layers.PatchDropout` keeping ``keep_ratio`` of the patches (in training mode)."""
    from timm.layers import PatchDropout

    return PatchDropout(prob=1.0 - float(keep_ratio), num_prefix_tokens=num_prefix).train()


def select_patches(
    vit: SkippableViT, tokens: torch.Tensor, keep_ratio: float, scorer: str = "cls_attn"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop patches from embedded ``tokens``: ``(kept tokens, cls-attention scores or None)``.

    ``keep_ratio == 1`` returns ``tokens`` itself and computes nothing.
    """
    check_scorer(scorer)
    num_patches = tokens.shape[1] - vit.num_prefix_tokens
    k = kept_count(num_patches, keep_ratio)
    if k == num_patches:
        return tokens, None
    if scorer == "random":
        return random_dropout(keep_ratio, vit.num_prefix_tokens)(tokens), None
    scores = cls_attention(vit, tokens)
    return keep_top(tokens, scores, k, vit.num_prefix_tokens), scores


def forward_blocks(vit: SkippableViT, tokens: torch.Tensor) -> torch.Tensor:
    """Every block then the head, on whatever tokens are left."""
    for block in vit.vit.blocks:
        tokens = block(tokens)
    return vit.head(tokens)


class PatchKeptViT(nn.Module):
    """A backbone that keeps ``keep_ratio`` of the patches of every image (inference and training).

    ``PatchKeptViT(vit, 1.0)(x)`` is ``vit(x)``. Every block sees ``prefix + kept_count(P, keep_ratio)``
    tokens: the work of the dropped patches is never done.
    """

    def __init__(self, vit: SkippableViT, keep_ratio: float, scorer: str = "cls_attn") -> None:
        super().__init__()
        check_scorer(scorer)
        self.kept = kept_count(vit.num_tokens - vit.num_prefix_tokens, keep_ratio)
        self.backbone = vit
        self.keep_ratio = float(keep_ratio)
        self.scorer = scorer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` from normalised images, computed on the kept patches only."""
        tokens, _ = select_patches(self.backbone, self.backbone.embed(images), self.keep_ratio, self.scorer)
        return forward_blocks(self.backbone, tokens)
