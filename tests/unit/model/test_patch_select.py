"""Patch selection: dropped patches are removed (every block sees fewer tokens), keep 1 changes nothing."""

from __future__ import annotations

import pytest
import torch

from vitskip_env.model import SkippableViT
from vitskip_env.model.patch_select import (
    PatchKeptViT,
    cls_attention,
    keep_shared,
    keep_top,
    kept_count,
    select_patches,
    shared_keep_mask,
)


@pytest.fixture(scope="module")
def vit() -> SkippableViT:
    torch.manual_seed(0)
    return SkippableViT("mini", num_classes=10).eval()


def _block_token_counts(vit: SkippableViT) -> tuple[list[int], list]:
    seen: list[int] = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for b in vit.vit.blocks]
    return seen, hooks


def test_kept_count_matches_timm_patch_dropout_and_refuses_bad_ratios() -> None:
    assert [kept_count(64, r) for r in (1.0, 0.875, 0.75, 0.625, 0.5, 0.375)] == [64, 56, 48, 40, 32, 24]
    assert kept_count(64, 0.001) == 1
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
            kept_count(64, bad)


def test_every_block_sees_only_the_kept_tokens(vit: SkippableViT) -> None:
    x = torch.randn(3, 3, 32, 32)
    seen, hooks = _block_token_counts(vit)
    try:
        with torch.no_grad():
            logits = PatchKeptViT(vit, 0.5)(x)
    finally:
        for h in hooks:
            h.remove()
    assert logits.shape == (3, 10)
    assert seen == [1 + 32] * vit.depth  # class token + half of the 64 patches, in every block


def test_keep_one_is_the_unmodified_model_bit_for_bit(vit: SkippableViT) -> None:
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(PatchKeptViT(vit, 1.0)(x), vit(x))
        assert torch.equal(PatchKeptViT(vit, 1.0)(x), vit.vit(x))  # timm's own forward


def test_cls_attention_is_the_first_blocks_class_token_attention(vit: SkippableViT) -> None:
    x = torch.randn(2, 3, 32, 32)
    tokens = vit.embed(x)
    block = vit.vit.blocks[0]
    attn = block.attn
    b, n, _ = tokens.shape
    qkv = attn.qkv(block.norm1(tokens)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    full = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # (B, heads, T, T)
    expected = full[:, :, 0, 1:].mean(1)
    torch.testing.assert_close(cls_attention(vit, tokens), expected)


def test_keep_top_keeps_the_highest_scores_in_patch_order() -> None:
    tokens = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)  # 1 prefix + 4 patches
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.8], [0.5, 0.1, 0.7, 0.6]])
    kept = keep_top(tokens, scores, 2, num_prefix=1)
    assert kept.shape == (2, 3, 1)
    assert kept[0, :, 0].tolist() == [0.0, 2.0, 4.0]  # prefix, patches 1 and 3
    assert kept[1, :, 0].tolist() == [5.0, 8.0, 9.0]  # prefix, patches 2 and 3


def test_agentvit_shared_rule_keeps_patches_at_or_above_the_mean() -> None:
    mask = shared_keep_mask(torch.tensor([0.0, 1.0, 0.5, 0.2]))  # mean 0.425
    assert mask.tolist() == [False, True, True, False]
    tokens = torch.randn(3, 5, 8)
    kept = keep_shared(tokens, mask, num_prefix=1)
    assert kept.shape == (3, 3, 8)
    assert torch.equal(kept, tokens[:, [0, 2, 3]])


def test_random_scorer_is_timms_patch_dropout_count(vit: SkippableViT) -> None:
    tokens = vit.embed(torch.randn(4, 3, 32, 32))
    kept, scores = select_patches(vit, tokens, 0.625, "random")
    assert kept.shape == (4, 1 + 40, tokens.shape[2]) and scores is None
    assert torch.equal(kept[:, 0], tokens[:, 0])  # the class token stays in front
    with pytest.raises(ValueError, match="scorer must be one of"):
        select_patches(vit, tokens, 0.5, "saliency")
