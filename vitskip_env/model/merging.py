"""Token merging (ToMe, Bolya et al. 2023) on the package's timm blocks: training-free, combinable with skipping.

Each block with a merge count ``r > 0`` runs its attention, then merges the ``r`` most similar
pairs of tokens before its MLP (bipartite soft matching):

1. the tokens after the prefix (class / distillation / register tokens are never merged and stay in
   front) are split alternately into sets A and B;
2. each A token's most similar B token is found by the cosine similarity of the attention *keys*
   (averaged over heads): ToMe's metric;
3. the ``r`` A tokens with the most similar partners are merged into them (a size-weighted average);
   the other A tokens and all B tokens are kept: ``[prefix, unmerged A, B]``.

A token's *size* (how many patches it holds) is carried along, and later attention adds ``log(size)``
to the keys' logits (proportional attention), so a merged token is attended to as the patches it
replaces would have been. ``r`` is capped at half the non-prefix tokens, as in ToMe.

Real merging: the token tensor really shrinks, every later block runs on fewer tokens. A block with
``r = 0`` and no merged tokens yet is called as it is, so ``r = 0`` everywhere reproduces the model
bit for bit. :func:`run_block_merged` combines merging with per-image skipping on rectangular tensors:
a row that skips block ``i`` still merges that block's ``r`` tokens, by its token features (it computes
no keys), so every row of the batch keeps the same token count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import SkippableViT

__all__ = [
    "TokenMerge",
    "TokenMergingViT",
    "bipartite_soft_matching",
    "check_mergeable",
    "merge_schedule",
    "merge_tokens",
    "merge_weighted",
    "merging_block",
    "run_block_merged",
]


@dataclass(frozen=True)
class TokenMerge:
    """One merge step for a batch: which A tokens stay, which merge into which B token.

    Index tensors are ``(B, k, 1)`` into the A / B halves of the non-prefix tokens.
    """

    protected: int
    unmerged: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor

    @property
    def r(self) -> int:
        """Tokens removed by this merge."""
        return int(self.src.shape[1])

    def __call__(self, x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        """Apply the merge to ``x`` ``(B, T, C)`` (tokens, or sizes with ``C = 1``): ``(B, T - r, C)``.

        ``mode`` is the ``scatter_reduce`` reduction of a merged A token into its B token (``"sum"``
        for the size-weighted average of :func:`merge_weighted`, ``"mean"`` for a plain one).
        """
        p = self.protected
        a, b = x[:, p::2], x[:, p + 1 :: 2]
        n, _, c = a.shape
        kept = a.gather(1, self.unmerged.expand(n, self.unmerged.shape[1], c))
        moved = a.gather(1, self.src.expand(n, self.src.shape[1], c))
        b = b.scatter_reduce(1, self.dst.expand(n, self.dst.shape[1], c), moved, reduce=mode)
        return torch.cat([x[:, :p], kept, b], dim=1)


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 0) -> TokenMerge | None:
    """ToMe's bipartite soft matching on ``metric`` ``(B, T, C)``; ``None`` when nothing is merged.

    Args:
        metric: The similarity features of each token (the attention keys averaged over heads, or the
            tokens themselves); only their direction counts (cosine similarity).
        r: Tokens to remove; capped at ``(T - protected) // 2`` (the size of set A).
        protected: Leading tokens that are never merged and stay in front (class / register tokens).
    """
    r = min(int(r), (metric.shape[1] - protected) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        m = metric[:, protected:]
        m = m / m.norm(dim=-1, keepdim=True)
        scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)  # (B, |A|, |B|) cosine similarities
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True, stable=True)[..., None]
        src = order[:, :r]
        return TokenMerge(protected, unmerged=order[:, r:], src=src, dst=partner[..., None].gather(1, src))


def merge_weighted(merge: TokenMerge, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``x`` as size-weighted averages; returns the merged tokens and their sizes ``(B, T - r, 1)``."""
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def merge_tokens(
    x: torch.Tensor, size: torch.Tensor | None, r: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Merge ``r`` tokens of ``x`` by the tokens' own similarity (no block run): for rows that skip a block."""
    merge = bipartite_soft_matching(x, r, protected)
    if merge is None:
        return x, size
    return merge_weighted(merge, x, size)


def check_mergeable(block: nn.Module) -> None:
    """Raise ``TypeError`` unless ``block`` is a timm ``Block`` whose attention is timm's ``Attention``."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    if type(block) is not Block or type(block.attn) is not Attention:
        raise TypeError(
            f"token merging supports timm's pre-norm Block with its standard Attention; got "
            f"{type(block).__name__} with {type(getattr(block, 'attn', None)).__name__}. Models with other "
            "blocks (ResPostBlock, parallel blocks, RoPE attention) can be skipped but not merged."
        )


def _attention_bias(size: torch.Tensor | None) -> torch.Tensor | None:
    """Proportional attention: ``log(size)`` added to every query's logit of each key, ``(B, 1, 1, T)``."""
    return None if size is None else size.log()[:, None, None, :, 0]


def _attention_with_keys(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention.forward`` (same kernels), also returning the keys averaged over heads ``(B, T, head_dim)``."""
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        out = attn.attn_drop(logits.softmax(dim=-1)) @ v
    out = attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), k.mean(1)


def merging_block(
    block: nn.Module, x: torch.Tensor, size: torch.Tensor | None, r: int, protected: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One timm ``Block`` with ToMe: attention (proportional once tokens were merged), merge ``r``, MLP.

    With ``r = 0`` and ``size is None`` (nothing merged yet) this is ``block(x)`` itself.
    """
    if r <= 0 or (x.shape[1] - protected) // 2 <= 0:
        return (block(x), size) if size is None else (block(x, attn_mask=_attention_bias(size)), size)
    attn_out, keys = _attention_with_keys(block.attn, block.norm1(x), _attention_bias(size))
    x = x + block.drop_path1(block.ls1(attn_out))
    merge = bipartite_soft_matching(keys, r, protected)
    if merge is not None:
        x, size = merge_weighted(merge, x, size)
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, size


def run_block_merged(
    vit: SkippableViT,
    i: int,
    tokens: torch.Tensor,
    size: torch.Tensor | None,
    r: int,
    execute: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block ``i`` with ``r`` merges on the rows where ``execute`` (``bool (N,)``; ``None``: all) holds.

    Executing rows run :func:`merging_block` (gathered: skipped rows do no block arithmetic, and no
    executing row means no block call); the others merge ``r`` tokens by their token features
    (:func:`merge_tokens`), so all rows leave with the same number of tokens. With ``r = 0`` and no
    merged tokens yet this is :meth:`SkippableViT.run_block`.
    """
    p, block = vit.num_prefix_tokens, vit.blocks[i]
    if execute is None:
        return merging_block(block, tokens, size, r, p)
    rows = execute.nonzero().squeeze(1)
    n = tokens.shape[0]
    if rows.numel() == n:
        return merging_block(block, tokens, size, r, p)
    if r <= 0 and size is None:
        return vit.run_block(i, tokens, rows), None
    if rows.numel() == 0:
        return merge_tokens(tokens, size, r, p) if r > 0 else (tokens, size)
    if size is None:
        size = tokens.new_ones(n, tokens.shape[1], 1)
    skipped = (~execute).nonzero().squeeze(1)
    run_x, run_size = merging_block(block, tokens.index_select(0, rows), size.index_select(0, rows), r, p)
    if r > 0:
        skip_x, skip_size = merge_tokens(tokens.index_select(0, skipped), size.index_select(0, skipped), r, p)
    else:
        skip_x, skip_size = tokens.index_select(0, skipped), size.index_select(0, skipped)
    out = run_x.new_empty(n, *run_x.shape[1:]).index_copy_(0, rows, run_x).index_copy_(0, skipped, skip_x)
    assert run_size is not None and skip_size is not None
    out_size = run_size.new_empty(n, *run_size.shape[1:]).index_copy_(0, rows, run_size).index_copy_(0, skipped, skip_size)
    return out, out_size


def merge_schedule(r: int | Sequence[int], depth: int, num_tokens: int, protected: int) -> list[int]:
    """The merges each block really makes: ``r`` per block (an int or one per block), capped as ToMe caps it.

    Raises:
        ValueError: A negative count, or a per-block list of the wrong length.
    """
    wanted = [int(r)] * depth if isinstance(r, int) else [int(v) for v in r]
    if len(wanted) != depth or any(v < 0 for v in wanted):
        raise ValueError(f"token merging needs r >= 0, one int or one per block ({depth}); got {r!r}")
    out, t = [], num_tokens
    for v in wanted:
        v = min(v, (t - protected) // 2)
        out.append(v)
        t -= v
    return out


class TokenMergingViT(nn.Module):
    """A :class:`SkippableViT` run with ToMe: ``r`` tokens merged in every block (training-free).

    Args:
        backbone: The ViT; its blocks must be timm ``Block`` s (:func:`check_mergeable`).
        r: Tokens merged per block: one int, or one per block.

    ``forward(images, execute_mask=None)`` also takes a per-image execute mask (skipped blocks do no
    work, as in :class:`SkippableViT`); ``return_mask=True`` returns it (all blocks when ``None``), so the
    package's scorer treats this like any model that reports its executed blocks.
    """

    def __init__(self, backbone: SkippableViT, r: int | Sequence[int]) -> None:
        super().__init__()
        for block in backbone.blocks:
            check_mergeable(block)
        self.backbone = backbone
        self.schedule = merge_schedule(r, backbone.depth, backbone.num_tokens, backbone.num_prefix_tokens)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return self.backbone.depth

    def token_counts(self) -> list[int]:
        """Tokens each block sees (before its merge)."""
        counts, t = [], self.backbone.num_tokens
        for r in self.schedule:
            counts.append(t)
            t -= r
        return counts

    def forward(
        self, images: torch.Tensor, execute_mask: torch.Tensor | None = None, return_mask: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits for normalised images ``(B, 3, H, W)`` (and the executed mask with ``return_mask``)."""
        vit = self.backbone
        x, size = vit.embed(images), None
        if execute_mask is not None:
            vit._check_mask(execute_mask, images.shape[0])
            execute_mask = execute_mask.to(x.device)
        for i, r in enumerate(self.schedule):
            x, size = run_block_merged(vit, i, x, size, r, None if execute_mask is None else execute_mask[:, i])
        logits = vit.head(x)
        if not return_mask:
            return logits
        if execute_mask is None:
            execute_mask = torch.ones(images.shape[0], vit.depth, dtype=torch.bool, device=logits.device)
        return logits, execute_mask
