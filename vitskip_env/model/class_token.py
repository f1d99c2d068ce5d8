"""A ViT's last block for the class token only, where nothing but the head reads its output.

With class-token pooling the head reads token 0 after the final norm, a per-token operation, so
after the last block that runs only the class token's output matters. That block still needs the
keys and values of every token, but the query, the attention output, the projection and the MLP
only for the class token: for the ``demo`` preset (17 tokens) about a quarter of a block's
arithmetic. The NSGA-II layer search ends every static subset this way
(:func:`agents.nsga2.evaluate_subsets`), where most nodes of the subsets' prefix trie are such
last blocks.

Only plain timm ``Block`` / ``Attention`` modules in eval mode qualify (what
:func:`class_token_ready` checks); anything else keeps the full block. The arithmetic is the same
as the full block's restricted to one row, up to float rounding of the smaller matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from .backbone import SkippableViT


def class_token_ready(backbone: SkippableViT) -> bool:
    """Whether the head reads only token 0 and every block is a plain timm ``Block`` (class-token-only last block applies)."""
    vit = backbone.vit
    if type(vit) is not VisionTransformer or vit.global_pool != "token" or getattr(vit, "attn_pool", None) is not None:
        return False  # distilled DeiT (two head tokens), average / attention pooling
    return all(type(b) is Block and type(b.attn) is Attention and getattr(b.attn, "gate", None) is None for b in vit.blocks)


def run_block_class_token(backbone: SkippableViT, i: int, tokens: torch.Tensor) -> torch.Tensor:
    """Block ``i`` on ``(B, T, D)`` tokens, returning only the class token's output ``(B, 1, D)``.

    For inference (no dropout, no stochastic depth); check :func:`class_token_ready` first.
    ``backbone.head`` accepts the result as it is.
    """
    block = backbone.vit.blocks[i]
    attn = block.attn
    b, n, _ = tokens.shape
    heads, head_dim, dim = attn.num_heads, attn.head_dim, attn.attn_dim
    h = block.norm1(tokens)
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :1], w[:dim], None if bias is None else bias[:dim])
    kv = F.linear(h, w[dim:], None if bias is None else bias[dim:])
    q = q.reshape(b, 1, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1) @ v
    out = attn.proj(attn.norm(out.transpose(1, 2).reshape(b, 1, dim)))
    x = tokens[:, :1] + block.ls1(out)
    return x + block.ls2(block.mlp(block.norm2(x)))
